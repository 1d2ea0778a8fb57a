/**
 * The database half of a node as Layers, wired from its config: the local MariaDB
 * (managed or attached) with its replication login, the binlog server serving the chosen
 * log, the routing table and the proxy, the route keeper, the database role machine, and
 * a DatabaseNode service that reports on them (status, GET /replica, the read flag peers
 * route by).
 */
import { Context, Effect, Layer, Schedule, Stream } from "effect"
import { type NodeConfig, retentionOf } from "../config/NodeConfig.js"
import type { NodeStatus } from "../domain/cluster/nodeStatus.js"
import { parseGtid } from "../domain/cluster/gtid.js"
import type { Health } from "../services/admin/Admin.js"
import * as BinlogCapture from "../services/binlog/BinlogCapture.js"
import * as BinlogServer from "../services/binlog/BinlogServer.js"
import { BinlogSource } from "../services/binlog/BinlogSource.js"
import { CommitPath, commitPathLayer } from "../services/binlog/BinlogSync.js"
import * as ChosenBinlog from "../services/binlog/ChosenBinlog.js"
import * as DatabaseRole from "../services/database/DatabaseRole.js"
import * as LocalMariaDb from "../services/database/LocalMariaDb.js"
import * as NodeDatabase from "../services/database/NodeDatabase.js"
import { PaxosLog } from "../services/paxos/PaxosLog.js"
import * as Proxy from "../services/proxy/Proxy.js"
import * as RouteKeeper from "../services/proxy/RouteKeeper.js"
import * as Routing from "../services/proxy/Routing.js"

export interface DatabaseNodeShape {
  /** The database, commit-path and proxy parts of GET /status. */
  readonly status: Effect.Effect<Pick<NodeStatus, "database" | "proxy" | "commitPath">>
  /** GET /replica: 200 on a replica whose database serves reads (not diverged, not calibrating). */
  readonly replicaHealth: Effect.Effect<Health>
  /** Where the proxy's client ports listen. */
  readonly addresses: Proxy.ProxyShape["addresses"]
  /** POST /rebuild: 202 when this node takes the request, 409 when it refuses. */
  readonly rebuild: Effect.Effect<Health>
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
    binlogRetainBytes: retentionOf(config).bytes
  })

/**
 * The chosen log as the binlog source of this node's replica, with the Format_description
 * event of the local server (read once, on first use, over the replication login).
 */
export const chosenBinlogLayer = (config: NodeConfig, settings: Settings) =>
  Layer.effect(
    BinlogSource,
    Effect.gen(function*() {
      const { replication, server } = yield* LocalMariaDb.LocalMariaDb
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

/** The client ports (RW, RO) and forward ports; RW refused until this node is promoted. */
export const proxyLayer = (config: NodeConfig, settings: Settings) => {
  const self = config.members.find((m) => m.nodeId === config.nodeId)!
  return Proxy.layer({
    host: config.proxy?.listenHost ?? self.host,
    rwPort: self.rwPort!,
    roPort: self.roPort!,
    forwardRwPort: self.forwardRwPort,
    forwardRoPort: self.forwardRoPort,
    members: config.members.map((m) => m.host),
    localMariaDb: { host: "127.0.0.1", port: settings.port },
    proxyProtocol: config.proxy?.proxyProtocol,
    connectTimeout: config.proxy?.connectTimeoutMs === undefined ? undefined : `${config.proxy.connectTimeoutMs} millis`,
    maxConnections: config.proxy?.maxConnections,
    refuseRwInitially: true
  })
}

export const routeKeeperLayer = (config: NodeConfig, settings: Settings) =>
  RouteKeeper.layer({
    nodeId: config.nodeId,
    localMariaDb: { host: "127.0.0.1", port: settings.port },
    members: config.members.map((m) => ({
      nodeId: m.nodeId,
      forwardRw: { host: m.host, port: m.forwardRwPort! },
      forwardRo: { host: m.host, port: m.forwardRoPort! }
    })),
    roFallbackToMaster: config.proxy?.roFallbackToMaster ?? true
  })

const servesReads = (d: NodeDatabase.DatabaseStatus) => d.role === "replica" && d.diverged === null && d.up

/** Reports on the database half, and advertises this node's read flag on its heartbeats. */
const reportLayer = Layer.effect(
  DatabaseNode,
  Effect.gen(function*() {
    const database = yield* NodeDatabase.NodeDatabase
    const proxy = yield* Proxy.Proxy
    const routing = yield* Routing.Routing
    const commitPath = yield* CommitPath
    const log = yield* PaxosLog
    // Peers send RO only to nodes that say they serve reads: no request per peer.
    yield* log.advertise(() => servesReads(Effect.runSync(database.status)) ? RouteKeeper.SERVES_READS : 0)
    return DatabaseNode.of({
      status: Effect.gen(function*() {
        const [stats, routes] = [yield* proxy.stats, yield* routing.current]
        return {
          database: yield* database.status,
          commitPath: commitPath.report(),
          proxy: { ...stats, routes: { rw: Routing.describeTarget(routes.rw), ro: Routing.describeTarget(routes.ro) } }
        }
      }),
      replicaHealth: Effect.map(database.status, (d) => ({
        ok: servesReads(d),
        body: { role: d.role, lag: d.lag, diverged: d.diverged, up: d.up }
      })),
      rebuild: Effect.map(database.requestRebuild, (r) => ({ ok: r.accepted, body: r })),
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
  const routes = routeKeeperLayer(config, settings).pipe(Layer.provideMerge(DatabaseRole.layer))
  const database = NodeDatabase.layer({ nodeId: config.nodeId, rebuildAuto: config.rebuild?.auto ?? true }).pipe(
    Layer.provideMerge(Layer.mergeAll(binlog, routes, commitPathLayer, proxyLayer(config, settings)))
  )
  return reportLayer.pipe(
    Layer.provideMerge(database),
    Layer.provideMerge(table),
    Layer.provideMerge(mariadb)
  )
}
