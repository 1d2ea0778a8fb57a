/**
 * The database half of a node as Layers, wired from its config: the local MariaDB
 * (managed or attached) with its replication login, the binlog server serving the chosen
 * log, the routing table and the proxy, the route keeper, the database role machine, and
 * a DatabaseNode service that reports on them (status, GET /replica, the read flag peers
 * route by).
 */
import { Context, Effect, Layer, Schedule, type Scope, Stream } from "effect"
import { MasterLease } from "../services/cluster/MasterLease.js"
import * as PeerTls from "../services/tls/PeerTls.js"
import { adminTokenOf, type NodeConfig, retentionOf } from "../config/NodeConfig.js"
import type { NodeStatus } from "../domain/cluster/nodeStatus.js"
import { parseGtid } from "../domain/cluster/gtid.js"
import { type Health, OfferRefused, type StreamOffer } from "../services/admin/Admin.js"
import { ClusterState } from "../services/cluster/ClusterState.js"
import { DATA_BYTES_HEADER, encodeSnapshot, SNAPSHOT_HEADER } from "../services/database/PeerCopy.js"
import * as BinlogCapture from "../services/binlog/BinlogCapture.js"
import * as BinlogServer from "../services/binlog/BinlogServer.js"
import { BinlogSource } from "../services/binlog/BinlogSource.js"
import { CommitPath, commitPathLayer } from "../services/binlog/BinlogSync.js"
import type { CommitPathHistograms } from "../domain/metrics/histogram.js"
import { DEFAULT_MAX_CONNECTIONS } from "../domain/mysql/serverOptions.js"
import * as ChosenBinlog from "../services/binlog/ChosenBinlog.js"
import * as DatabaseRole from "../services/database/DatabaseRole.js"
import * as LocalMariaDb from "../services/database/LocalMariaDb.js"
import { layoutOf } from "../services/database/MariaDbLayout.js"
import type { LocalMariaDbAddress } from "../domain/cluster/routing.js"
import * as NodeDatabase from "../services/database/NodeDatabase.js"
import { PaxosLog } from "../services/paxos/PaxosLog.js"
import * as Proxy from "../services/proxy/Proxy.js"
import * as RouteKeeper from "../services/proxy/RouteKeeper.js"
import * as Routing from "../services/proxy/Routing.js"

export interface DatabaseNodeShape {
  /** The database, commit-path and proxy parts of GET /status. */
  readonly status: Effect.Effect<Pick<NodeStatus, "database" | "proxy" | "commitPath">>
  /** The master's commit-path histograms (for /metrics and the status page's history). */
  readonly commitPath: CommitPathHistograms
  /** Administrative writes as the master (POST /users): see NodeDatabase.writeAsMaster. */
  readonly writeAsMaster: NodeDatabase.NodeDatabaseShape["writeAsMaster"]
  /** Where the proxy's client ports listen. */
  readonly addresses: Proxy.ProxyShape["addresses"]
  /** POST /rebuild: 202 when this node takes the request, 409 when it refuses. */
  readonly rebuild: Effect.Effect<Health>
  /** POST /switchover: 200 with what was done, 409 with why not. */
  readonly switchover: (to: number | undefined) => Effect.Effect<Health>
  /** GET /backup: a copy of this node's database for a peer's rebuild, with the state it starts from. */
  readonly backup: Effect.Effect<StreamOffer, OfferRefused, Scope.Scope>
}

export class DatabaseNode extends Context.Service<DatabaseNode, DatabaseNodeShape>()("phxmaria/DatabaseNode") {}

type Settings = NonNullable<NodeConfig["mariadb"]>

/** This node's MariaDB from `config.mariadb` (which must be set). */
export const localMariaDbLayer = (config: NodeConfig, settings: Settings) =>
  LocalMariaDb.layer({
    nodeId: config.nodeId,
    dataDir: config.dataDir,
    mode: settings.mode ?? "managed",
    port: settings.port,
    socket: settings.socket,
    user: settings.user,
    password: settings.password,
    extraConfig: settings.extraConfig,
    maxTransactionBytes: settings.maxTransactionMb !== undefined ? settings.maxTransactionMb * 1024 * 1024 : undefined,
    binlogRetainSeconds: config.log?.retainSeconds,
    binlogRetainBytes: retentionOf(config).bytes,
    bufferPoolMb: settings.bufferPoolMb,
    maxConnections: settings.maxConnections,
    characterSet: settings.characterSet,
    collation: settings.collation,
    ssl: settings.ssl
  })

/**
 * The chosen log as the binlog source of this node's replica, with the Format_description
 * event of the local server (read once, on first use, over the replication login).
 */
export const chosenBinlogLayer = (config: NodeConfig, settings: Settings) =>
  Layer.effect(
    BinlogSource,
    Effect.gen(function*() {
      const { replication, server, managed } = yield* LocalMariaDb.LocalMariaDb
      const formatDescription = yield* Effect.cached(
        Effect.scoped(Effect.gen(function*() {
          // From where the binlog is now: older files may be purged (any position starts
          // with the Format_description event).
          const rows = yield* server.query("SELECT @@GLOBAL.gtid_binlog_pos AS pos").pipe(
            Effect.retry(Schedule.spaced("200 millis")),
            Effect.orDie
          )
          const pos = String((rows[0] as { pos?: unknown } | undefined)?.pos ?? "").split(",")[0] ?? ""
          const capture = yield* BinlogCapture.make({
            host: "127.0.0.1",
            port: settings.port,
            ...(managed && server.socket !== undefined ? { socketPath: server.socket } : {}),
            ...replication,
            serverId: NodeDatabase.captureServerId(config.nodeId) + 100_000,
            startAfter: parseGtid(pos) ?? null
          })
          yield* Effect.forkScoped(Stream.runDrain(capture.transactions))
          return yield* capture.formatDescription
        }))
      )
      return yield* ChosenBinlog.make(formatDescription)
    })
  )

/** The binlog server this node's MariaDB replicates from (loopback, the replication login). */
export const binlogServerLayer = (config: NodeConfig, settings: Settings) =>
  Layer.effect(
    BinlogServer.BinlogServer,
    Effect.gen(function*() {
      const { replication } = yield* LocalMariaDb.LocalMariaDb
      return yield* BinlogServer.make({
        host: "127.0.0.1",
        port: settings.binlogServerPort,
        serverId: NodeDatabase.binlogServerId(config.nodeId),
        ...replication,
        defaultHeartbeatMs: 1000
      })
    })
  )

/**
 * The proxy's way to this node's MariaDB: a managed server over its Unix socket, the only
 * place it takes PROXY headers from (docs/mariadb.md, "PROXY protocol"); an attached one
 * over TCP (its proxy_protocol_networks is the operator's).
 */
const localMariaDbAddress = (config: NodeConfig, settings: Settings): LocalMariaDbAddress =>
  (settings.mode ?? "managed") === "managed"
    ? { host: "127.0.0.1", port: settings.port, socket: layoutOf(LocalMariaDb.managedDirOf(config.dataDir)).socket }
    : { host: "127.0.0.1", port: settings.port }

/** The client ports (RW, RO) and forward ports; RW refused until this node is promoted. */
export const proxyLayer = (config: NodeConfig, settings: Settings) => {
  const self = config.members.find((m) => m.nodeId === config.nodeId)!
  const clientTls = settings.ssl === undefined ? Effect.succeed(undefined) : PeerTls.loadClientTls(settings.ssl)
  return Layer.unwrap(Effect.map(Effect.all([MasterLease, PeerTls.loadOptional(config.tls, config.nodeId), clientTls]), ([lease, tls, client]) => Proxy.layer({
    tls,
    clientTls: client,
    requireClientTls: settings.ssl?.require,
    host: config.proxy?.listenHost ?? self.host,
    rwPort: self.rwPort!,
    roPort: self.roPort!,
    forwardRwPort: self.forwardRwPort,
    forwardRoPort: self.forwardRoPort,
    members: config.members.map((m) => m.host),
    localMariaDb: localMariaDbAddress(config, settings),
    proxyProtocol: config.proxy?.proxyProtocol,
    connectTimeout: config.proxy?.connectTimeoutMs === undefined ? undefined : `${config.proxy.connectTimeoutMs} millis`,
    maxConnections: config.proxy?.maxConnections,
    // A managed server takes mariadb.maxConnections clients over every listener together (its agent's own logins on top).
    maxLocalConnections: (settings.mode ?? "managed") === "managed" ? settings.maxConnections ?? DEFAULT_MAX_CONNECTIONS : undefined,
    refuseRwInitially: true,
    rwGate: lease.holdsNow
  })))
}

export const routeKeeperLayer = (config: NodeConfig, settings: Settings) =>
  RouteKeeper.layer({
    nodeId: config.nodeId,
    localMariaDb: localMariaDbAddress(config, settings),
    members: config.members.map((m) => ({
      nodeId: m.nodeId,
      forwardRw: { host: m.host, port: m.forwardRwPort! },
      forwardRo: { host: m.host, port: m.forwardRoPort! }
    })),
    roFallbackToMaster: config.proxy?.roFallbackToMaster ?? true
  })

const servesReads = (d: NodeDatabase.DatabaseStatus) => d.role === "replica" && d.diverged === null && d.up

/** Reports on the database half, and advertises this node's read flag on its heartbeats. */
const reportLayer = (config: NodeConfig) => Layer.effect(
  DatabaseNode,
  Effect.gen(function*() {
    const database = yield* NodeDatabase.NodeDatabase
    const proxy = yield* Proxy.Proxy
    const routing = yield* Routing.Routing
    const commitPath = yield* CommitPath
    const log = yield* PaxosLog
    const cluster = yield* ClusterState
    const { server, backup: copyDatabase } = yield* LocalMariaDb.LocalMariaDb
    // Peers send RO only to nodes that say they serve reads: no request per peer.
    yield* log.advertise(() => {
      const d = Effect.runSync(database.status)
      return servesReads(d) ? RouteKeeper.SERVES_READS | (d.lag === 0 ? RouteKeeper.CAUGHT_UP : 0) : 0
    })

    const refuse = (message: string) => new OfferRefused({ message })
    /**
     * A copy for a peer: the state first (with no large transaction half-accepted, whose
     * parts would lie before it), the log kept from there while the copy runs, and the copy
     * taken once this database holds everything below that state.
     */
    const backup = Effect.gen(function*() {
      const d = yield* database.status
      if (!d.up || d.diverged !== null || (d.role !== "replica" && d.role !== "master")) {
        return yield* refuse(`node ${config.nodeId}'s database is ${d.diverged !== null ? "diverged" : d.up ? d.role : "down"}: ask another`)
      }
      const snapshot = yield* cluster.current.pipe(
        Effect.repeat({ schedule: Schedule.spaced("100 millis"), until: (s) => s.state.partial == null }),
        Effect.timeoutOrElse({ duration: "30 seconds", orElse: () => Effect.fail(refuse("a large transaction has been in flight for 30 s")) })
      )
      yield* database.pinLog(snapshot.appliedUpTo)
      const target = snapshot.state.lastGtid
      const applied = server.query("SELECT @@GLOBAL.gtid_binlog_pos AS pos").pipe(
        Effect.map((rows) => NodeDatabase.localPosition(String((rows[0] as { pos?: unknown } | undefined)?.pos ?? ""), target?.domain ?? 0).gtid?.seq ?? 0),
        Effect.orElseSucceed(() => 0)
      )
      yield* applied.pipe(
        Effect.repeat({ schedule: Schedule.spaced("100 millis"), until: (seq) => seq >= (target?.seq ?? 0) }),
        Effect.timeoutOrElse({ duration: "60 seconds", orElse: () => Effect.fail(refuse("this database did not catch up with the log within 60 s")) })
      )
      const copy = yield* copyDatabase.pipe(Effect.mapError((e) => refuse(e.message)))
      yield* Effect.logInfo(`backup: giving a copy of about ${Math.round(copy.dataBytes / 1024 / 1024)} MB, from instance ${snapshot.appliedUpTo}`)
      return { headers: { [SNAPSHOT_HEADER]: encodeSnapshot(snapshot), [DATA_BYTES_HEADER]: String(copy.dataBytes) }, body: copy.body } satisfies StreamOffer
    })
    return DatabaseNode.of({
      status: Effect.gen(function*() {
        const [stats, routes] = [yield* proxy.stats, yield* routing.current]
        return {
          database: yield* database.status,
          commitPath: commitPath.report(),
          proxy: { ...stats, routes: { rw: Routing.describeTarget(routes.rw), ro: Routing.describeTarget(routes.ro) } }
        }
      }),
      commitPath,
      writeAsMaster: database.writeAsMaster,
      rebuild: Effect.map(database.requestRebuild, (r) => ({ ok: r.accepted, body: r })),
      switchover: (to) =>
        database.switchover(to).pipe(
          Effect.map((done): Health => ({ ok: true, body: done })),
          Effect.catch((e) => Effect.succeed<Health>({ ok: false, body: { error: e.reason } }))
        ),
      backup,
      addresses: proxy.addresses
    })
  })
)

/**
 * The whole database half. Needs the node's core services (PaxosLog, ClusterState,
 * MasterLease, ReadinessCell) from the caller; exposes DatabaseNode, NodeDatabase, Proxy
 * and LocalMariaDb.
 */
export const layer = (config: NodeConfig) => {
  const settings = config.mariadb!
  const mariadb = localMariaDbLayer(config, settings)
  const table = Routing.layerTable({
    rw: Routing.noTarget("the cluster is starting"),
    ro: Routing.noTarget("the cluster is starting")
  })
  const binlog = binlogServerLayer(config, settings).pipe(Layer.provide(chosenBinlogLayer(config, settings)))
  // One proxy (the same layer value, built once): the route keeper also tells it the members.
  const proxy = proxyLayer(config, settings)
  const routes = routeKeeperLayer(config, settings).pipe(Layer.provideMerge(DatabaseRole.layer), Layer.provide(proxy))
  const database = Layer.unwrap(Effect.map(PeerTls.loadOptional(config.tls, config.nodeId), (peerTls) => NodeDatabase.layer({
    nodeId: config.nodeId,
    rebuildAuto: config.rebuild?.auto ?? true,
    copyWhenEmpty: config.join === true,
    donors: config.members.map((m) => ({ nodeId: m.nodeId, host: m.host, adminPort: m.adminPort })),
    adminToken: adminTokenOf(config),
    peerTls
  }))).pipe(
    Layer.provideMerge(Layer.mergeAll(binlog, routes, commitPathLayer, proxy))
  )
  return reportLayer(config).pipe(
    Layer.provideMerge(database),
    Layer.provideMerge(table),
    Layer.provideMerge(mariadb)
  )
}
