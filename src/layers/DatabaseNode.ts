/**
 * The database half of a node, wired from its config: the local MariaDB (managed or
 * attached), the replication login, the binlog server serving the chosen log, the proxy
 * with routing driven by the lease and the database role, and the role itself.
 */
import { Effect, Schedule, Stream } from "effect"
import { randomBytes } from "node:crypto"
import { mkdirSync, readFileSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { describeTarget } from "../services/proxy/Routing.js"
import { CommitPathHistograms } from "../domain/metrics/histogram.js"
import { routesFor } from "../domain/cluster/routing.js"
import * as BinlogCapture from "../services/binlog/BinlogCapture.js"
import * as BinlogServer from "../services/binlog/BinlogServer.js"
import { BinlogSource } from "../services/binlog/BinlogSource.js"
import * as ChosenBinlog from "../services/binlog/ChosenBinlog.js"
import * as MariaDbServer from "../services/database/MariaDbServer.js"
import { ClusterState } from "../services/cluster/ClusterState.js"
import { MasterLease } from "../services/cluster/MasterLease.js"
import * as NodeDatabase from "../services/database/NodeDatabase.js"
import { PaxosLog } from "../services/paxos/PaxosLog.js"
import * as Proxy from "../services/proxy/Proxy.js"
import * as Routing from "../services/proxy/Routing.js"
import { forkScopedLogged } from "../services/fibers.js"
import type { NodeConfig } from "../config/NodeConfig.js"

export const REPLICATION_USER = "phxmaria_repl"

/** my.cnf settings every managed node needs (docs/mariadb.md): semi-sync ready, truncation on restart. */
export const managedServerConfig = (port: number): Record<string, string | number | boolean> => ({
  port,
  "bind-address": "127.0.0.1",
  // Crash recovery drops prepared, un-ACKed transactions (never committed forward).
  "init-rpl-role": "SLAVE",
  rpl_semi_sync_slave_enabled: "ON",
  // Enabled by the agent when this node becomes master; never falls back to async.
  rpl_semi_sync_master_enabled: "OFF",
  rpl_semi_sync_master_wait_point: "AFTER_SYNC",
  rpl_semi_sync_master_wait_no_slave: "ON",
  rpl_semi_sync_master_timeout: "18446744073709551615",
  read_only: "ON",
  proxy_protocol_networks: "127.0.0.0/8,localhost",
  max_binlog_size: "64M",
  // Replicas apply the chosen log in parallel (in commit order), committing in groups: a
  // replica behind the log catches up faster than the master writes.
  slave_parallel_threads: 4,
  slave_parallel_mode: "optimistic",
  max_allowed_packet: "64M",
  slave_max_allowed_packet: "1073741824",
  // Above the proxy's four listeners at their default bound (4 x 1000), with room for the
  // agent's own logins: a full proxy never locks the capture client out.
  max_connections: 4200
})

/** The replication password of this node (local to it: its capture client and its binlog server). */
const replicationPassword = (dataDir: string): string => {
  const file = join(dataDir, "replication.secret")
  try {
    return readFileSync(file, "utf8").trim()
  } catch {
    const secret = randomBytes(18).toString("base64url")
    mkdirSync(dataDir, { recursive: true })
    writeFileSync(file, secret + "\n", { mode: 0o600 })
    return secret
  }
}

/** The replication login, created on this server only (sql_log_bin=0: no GTID for the others to lack). */
const ensureReplicationUser = (db: MariaDbServer.MariaDbServerShape, password: string) =>
  Effect.forEach(["127.0.0.1", "localhost"], (host) =>
    Effect.gen(function*() {
      yield* db.query("SET STATEMENT sql_log_bin=0 FOR CREATE USER IF NOT EXISTS ?@? IDENTIFIED BY ?", [REPLICATION_USER, host, password])
      yield* db.query("SET STATEMENT sql_log_bin=0 FOR ALTER USER ?@? IDENTIFIED BY ?", [REPLICATION_USER, host, password])
      yield* db.query("SET STATEMENT sql_log_bin=0 FOR GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO ?@?", [REPLICATION_USER, host])
    }), { discard: true })

export const runDatabaseNode = (config: NodeConfig) =>
  Effect.gen(function*() {
    const settings = config.mariadb!
    const self = config.members.find((m) => m.nodeId === config.nodeId)!
    const managed = (settings.mode ?? "managed") === "managed"
    const db = managed
      ? yield* MariaDbServer.makeManaged({
        dir: join(config.dataDir, "mariadb"),
        port: settings.port,
        serverId: config.nodeId,
        extraConfig: { ...managedServerConfig(settings.port), ...settings.extraConfig },
        // Restarts are the agent's (NodeDatabase): RW must be fenced before mariadbd runs again.
        supervise: false
      })
      : yield* MariaDbServer.attach({
        host: "127.0.0.1",
        port: settings.port,
        ...(settings.socket !== undefined ? { socket: settings.socket } : {}),
        user: settings.user!,
        ...(settings.password !== undefined ? { password: settings.password } : {})
      })
    const password = replicationPassword(config.dataDir)
    yield* ensureReplicationUser(db, password).pipe(Effect.retry({ schedule: Schedule.spaced("200 millis"), times: 50 }))
    const replication = { user: REPLICATION_USER, password }

    // The Format_description event replicas need: the local server's own, read once.
    const formatDescription = yield* Effect.cached(
      Effect.scoped(Effect.gen(function*() {
        const capture = yield* BinlogCapture.make({
          host: "127.0.0.1",
          port: settings.port,
          ...replication,
          serverId: NodeDatabase.captureServerId(config.nodeId) + 100_000,
          startAfter: null
        })
        yield* Effect.forkScoped(Stream.runDrain(capture.transactions))
        return yield* capture.formatDescription
      }))
    )
    const source = yield* ChosenBinlog.make(formatDescription)
    const binlogServer = yield* BinlogServer.make({
      host: "127.0.0.1",
      port: settings.binlogServerPort,
      serverId: NodeDatabase.binlogServerId(config.nodeId),
      ...replication,
      defaultHeartbeatMs: 1000
    }).pipe(Effect.provideService(BinlogSource, source))

    const routing = yield* Routing.makeSettable({
      rw: Routing.noTarget("the cluster is starting"),
      ro: Routing.noTarget("the cluster is starting")
    })
    const listenHost = config.proxy?.listenHost ?? self.host
    const proxy = yield* Proxy.make({
      host: listenHost,
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
    }).pipe(Effect.provideService(Routing.Routing, routing))

    const lease = yield* MasterLease
    const log = yield* PaxosLog
    const cluster = yield* ClusterState
    let database: NodeDatabase.NodeDatabaseShape | undefined

    /**
     * Peers whose database serves reads (a replica, not diverged, not calibrating), from the
     * flag each advertises on its Paxos heartbeat (every 500 ms; older than 2 s counts as
     * not serving): RO is never sent to a node that would refuse it (and a forward RO port of
     * a diverged node refuses anyway). No request per peer: an idle cluster stays idle.
     */
    const SERVES_READS = 1
    const HEARTBEAT_MAX_AGE_MS = 2_000
    const servesReads = (d: NodeDatabase.DatabaseStatus) => d.role === "replica" && d.diverged === null && d.up
    yield* log.advertise(() => database !== undefined && servesReads(Effect.runSync(database.status)) ? SERVES_READS : 0)
    const peersServingReads = Effect.map(log.advertised(HEARTBEAT_MAX_AGE_MS), (flags) =>
      new Set([...flags].filter(([, f]) => (f & SERVES_READS) !== 0).map(([id]) => id)))

    /** Routes from what this node knows now (docs/architecture.md, "Proxy and routing"). */
    const refreshRoutes = Effect.gen(function*() {
      if (database === undefined) return
      const [snapshot, paxos, serving, dbStatus] = [yield* cluster.current, yield* log.status, yield* database.serving, yield* database.status]
      // The master record as applied (the lease's view of it may trail by a fiber hop).
      const recorded = snapshot.state.master
      const master = serving ? config.nodeId : recorded === config.nodeId ? null : recorded
      const servingReads = yield* peersServingReads
      const readable = new Set<number>(paxos.reachable.filter((id) => servingReads.has(id)))
      if (dbStatus.role === "replica") readable.add(config.nodeId)
      else readable.delete(config.nodeId)
      const routes = routesFor({
        self: config.nodeId,
        master,
        localMariaDb: { host: "127.0.0.1", port: settings.port },
        members: config.members.map((m) => ({
          nodeId: m.nodeId,
          forwardRw: { host: m.host, port: m.forwardRwPort! },
          forwardRo: { host: m.host, port: m.forwardRoPort! }
        })),
        readable,
        roFallbackToMaster: config.proxy?.roFallbackToMaster ?? true
      })
      const now = yield* routing.current
      if (!Routing.sameTarget(now.rw, routes.rw) || !Routing.sameTarget(now.ro, routes.ro)) {
        yield* routing.setAll(routes)
        yield* Effect.logInfo(`routes: rw ${describeTarget(routes.rw)}, ro ${describeTarget(routes.ro)}`)
      }
    })

    const commitPath = new CommitPathHistograms()
    database = yield* NodeDatabase.make({
      commitPath,
      nodeId: config.nodeId,
      db,
      managed,
      binlogServer: binlogServer.address,
      replication,
      onServingChange: refreshRoutes
    }).pipe(Effect.provideService(Proxy.Proxy, proxy))
    // Routes follow at once what moves them: a new master record, this node's lease, its
    // database role (onServingChange); and once a second what is only polled (reachability,
    // the peers' read status).
    const refreshLogged = refreshRoutes.pipe(Effect.catchCause((cause) => Effect.logError("routing refresh failed", cause)))
    yield* refreshLogged.pipe(Effect.repeat(Schedule.spaced("1 second")), forkScopedLogged("routing: the refresh loop"))
    yield* cluster.masterChanges.pipe(
      Stream.changesWith((a, b) => a.state.master === b.state.master),
      Stream.runForEach(() => refreshLogged),
      forkScopedLogged("routing: following master changes")
    )
    const leaseEvents = yield* lease.events
    yield* leaseEvents.pipe(Stream.runForEach(() => refreshLogged), forkScopedLogged("routing: following lease events"))

    const status = Effect.gen(function*() {
      const [stats, routes] = [yield* proxy.stats, yield* routing.current]
      return {
        database: yield* database!.status,
        commitPath: commitPath.report(),
        proxy: { ...stats, routes: { rw: describeTarget(routes.rw), ro: describeTarget(routes.ro) } }
      }
    })
    /** GET /replica: a replica whose database serves reads (not diverged, not calibrating). */
    const replicaHealth = Effect.map(database.status, (d) => ({
      ok: servesReads(d),
      body: { role: d.role, lag: d.lag, diverged: d.diverged, up: d.up }
    }))
    return { db, proxy, database, binlogServer, status, replicaHealth }
  })
