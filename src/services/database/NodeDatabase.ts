/**
 * The node's database role (docs/architecture.md, "The database role"): keeps this node's MariaDB a replica of
 * the chosen log, promotes it when this node takes the master lease, and fences it when
 * the lease goes.
 *
 * - calibrate (start, restart of mariadbd, step-down): read_only on, learn the log up to a
 *   barrier (a Noop this node proposes and sees applied), then compare gtid_binlog_pos
 *   with the chosen log. Anything extra: SIGKILL and restart mariadbd (it always starts
 *   with --init-rpl-role=SLAVE, which truncates prepared, un-ACKed transactions) and
 *   compare again; still extra: diverged (refuses to serve or to run for master).
 *   Otherwise: replicate from this node's binlog server (which serves the chosen log).
 * - promote (lease taken): barrier, wait until the replica applied every chosen
 *   transaction, stop the replica thread, a fresh server_id for this term, semi-sync
 *   master on, capture from lastGtid, read_only off, then RW opens.
 * - step down (lease lost or the database failed): RW closes at once (the proxy's forward
 *   RW listener refuses and drops its relays; local RW routing is withdrawn), then
 *   read_only and calibrate.
 *
 * server_ids: the replica uses nodeId; a master term uses MASTER_SERVER_ID_BASE + epoch. A
 * replica silently skips events carrying its own server_id (docs/mariadb.md, "server_id and skipped events"), so a node never
 * replicates under an id it wrote transactions with.
 */
import { Context, Data, Effect, Exit, Fiber, Layer, Queue, Schedule, Schema, Scope, Stream, SubscriptionRef } from "effect"
import { describeCause } from "../../domain/describe.js"
import { formatGtid, type Gtid, gtidEquals, parseGtid } from "../../domain/cluster/gtid.js"
import { LagClock } from "../../domain/cluster/history.js"
import { joinHostPort } from "../../domain/wire/address.js"
import * as BinlogSync from "../binlog/BinlogSync.js"
import { checkPosition } from "../binlog/ChosenBinlog.js"
import { ClusterState } from "../cluster/ClusterState.js"
import { PaxosLog } from "../paxos/PaxosLog.js"
import { BinlogServer } from "../binlog/BinlogServer.js"
import { CommitPath } from "../binlog/BinlogSync.js"
import { RouteRefresh } from "../proxy/RouteKeeper.js"
import { DatabaseRoleCell, type DbRole } from "./DatabaseRole.js"
import { afterFailure, copyProgress, mayServeRw, nextStep, pauseMs, readinessOf, rebuildProgress } from "../../domain/cluster/databaseRole.js"
import { LocalMariaDb } from "./LocalMariaDb.js"
import { fetchCopy } from "./PeerCopy.js"
import type { PeerTls } from "../tls/PeerTls.js"
import { fetchStatus } from "../../client/StatusClient.js"
import { CAUGHT_UP, SERVES_READS } from "../proxy/RouteKeeper.js"
import { MasterLease, ReadinessCell } from "../cluster/MasterLease.js"
import { Proxy } from "../proxy/Proxy.js"
import { forkScopedLogged } from "../fibers.js"
import * as Time from "../time.js"
import { cappedExponential } from "../schedules.js"

export const MASTER_SERVER_ID_BASE = 1_000_000
/** How often an idle, caught-up replica is checked for divergence, and its replica threads. */
const IDLE_REPLICA_CHECK_MS = 1_000
const IDLE_THREAD_CHECK_MS = 5_000
/** How often the master asks its own mariadbd for its position (status, and a health probe). */
const MASTER_PROBE_EVERY_MS = 1_000
/** The role loop's pace outside the master role (lease events wake it at once). */
const IDLE_TICK_MS = 500
/** A replica's pace while the log moves under load (see `catchingUpTickMs`). */
const BUSY_REPLICA_TICK_MS = 200
export const captureServerId = (nodeId: number) => 3_000_000 + nodeId
export const binlogServerId = (nodeId: number) => 2_000_000 + nodeId

export type { DbRole }

export interface DatabaseStatus {
  readonly role: DbRole
  /** The local MariaDB's last GTID in the cluster's domain (null: none, or unknown). */
  readonly localGtid: string | null
  /** Chosen transactions not yet applied locally. */
  readonly lag: number | null
  /** How long ago the first of them was chosen, in seconds (0: caught up). */
  readonly lagSeconds: number | null
  /** Role transitions since this agent started. */
  readonly roleChanges: number
  readonly up: boolean
  readonly diverged: string | null
  /** Replica thread errors, if any. */
  readonly replicationError: string | null
  /** A rebuild's copy, then its replay until it has caught up; null otherwise. */
  readonly rebuild: ReturnType<typeof rebuildProgress> | ReturnType<typeof copyProgress> | null
}

export interface NodeDatabaseShape {
  readonly status: Effect.Effect<DatabaseStatus>
  /** Role changes (current first). */
  readonly roles: SubscriptionRef.SubscriptionRef<DbRole>
  /** Whether this node serves RW now (promoted, lease held). */
  readonly serving: Effect.Effect<boolean>
  /**
   * Administrative writes on this node's MariaDB as the master (POST /users): each statement
   * runs only while this node serves RW, and commits through the log like a client's write
   * (its semi-sync wait ends when the log has chosen it). Answers gtid_binlog_pos after them.
   */
  readonly writeAsMaster: (
    statements: ReadonlyArray<{ readonly sql: string; readonly params?: ReadonlyArray<unknown> }>
  ) => Effect.Effect<string, NotServingRw | MasterTermEnded | DatabaseQueryFailed>
  /**
   * An operator's rebuild (POST /rebuild): taken by a managed replica or diverged node,
   * refused by one that serves or may serve RW; carried out at the role loop's next step.
   */
  readonly requestRebuild: Effect.Effect<{ readonly accepted: boolean; readonly message: string }>
  /**
   * A planned switchover (POST /switchover), asked of the serving master: hands the master
   * role to `to` (a caught-up replica; any caught-up one when absent) once this node's last
   * transactions are in the log, and answers when a new master holds the lease.
   */
  readonly switchover: (to: number | undefined) => Effect.Effect<SwitchoverDone, SwitchoverRefused>
  /** Keeps the log from `instance` on (here and on live peers) while the scope is open: a copy being taken needs it. */
  readonly pinLog: (instance: number) => Effect.Effect<void, never, Scope.Scope>
}

export class NodeDatabase extends Context.Service<NodeDatabase, NodeDatabaseShape>()("phxmaria/NodeDatabase") {}

/** A statement on the local MariaDB failed (or its answer did not have the expected shape). */
export class DatabaseQueryFailed extends Data.TaggedError("DatabaseQueryFailed")<{ readonly sql: string; readonly cause: unknown }> {
  override get message() {
    return `${this.sql.slice(0, 60)}: ${describeCause(this.cause)}`
  }
}

/** A managed mariadbd did not start or restart. */
export class DatabaseStartFailed extends Data.TaggedError("DatabaseStartFailed")<{ readonly operation: "start" | "restart" | "rebuild"; readonly cause: unknown }> {
  override get message() {
    return `mariadbd ${this.operation}: ${describeCause(this.cause)}`
  }
}

/** Promotion found the local server behind the log (retried until it caught up, or the time ran out). */
export class NotCaughtUp extends Data.TaggedError("NotCaughtUp")<{ readonly local: string | null; readonly log: string | null }> {
  override get message() {
    return `at ${this.local ?? "nothing"}, log at ${this.log ?? "nothing"}`
  }
}

/** A switchover that could not be done (or not in time), and why; RW is open again when this node still serves. */
export class SwitchoverRefused extends Data.TaggedError("SwitchoverRefused")<{ readonly reason: string }> {
  override get message() {
    return this.reason
  }
}

export interface SwitchoverDone {
  readonly from: number
  readonly to: number
  /** The master once it took over (the successor, unless it failed to and another took over). */
  readonly master: number
  readonly epoch: number
  /** From RW closing here until a new master held the lease. */
  readonly handoverMs: number
}

/** How long a switchover waits for its target to catch up, for this node's last commits, and for the new master. */
const SWITCHOVER_TARGET_WAIT_MS = 30_000
const SWITCHOVER_DRAIN_MS = 5_000
const SWITCHOVER_TAKEOVER_MS = 15_000

/** This node's term as master ended during administrative writes: whether they are in the log is unknown. */
export class MasterTermEnded extends Data.TaggedError("MasterTermEnded")<{ readonly epoch: number }> {
  override get message() {
    return `this node's term as master (epoch ${this.epoch}) ended during the writes: they may not be in the log; check (SHOW GRANTS through a RW port) and run again with --update`
  }
}

/** This node does not serve RW now: administrative writes go to the master. */
export class NotServingRw extends Data.TaggedError("NotServingRw")<{ readonly role: DbRole; readonly master: number | null }> {
  override get message() {
    return `this node's database is ${this.role}, not the serving master (master: ${this.master ?? "none"}): ask the master`
  }
}

/** Promotion found that the master record names another node by now. */
export class LeaseMovedOn extends Data.TaggedError("LeaseMovedOn")<{ readonly master: number | null }> {}

export type NodeDatabaseError = DatabaseQueryFailed | DatabaseStartFailed | NotCaughtUp | LeaseMovedOn

export interface NodeDatabaseOptions {
  readonly nodeId: number
  readonly tickMs?: number
  /** Rebuild a diverged (or left-behind) managed server from a peer's copy; default true. */
  readonly rebuildAuto?: boolean
  /**
   * A new node (it joins with --join): an empty database in a cluster that has data takes a
   * copy of a peer's (a rebuild) instead of replaying the whole log.
   */
  readonly copyWhenEmpty?: boolean
  /** Where the cluster's members serve GET /backup (their admin ports): the donors of a rebuild. */
  readonly donors?: ReadonlyArray<{ readonly nodeId: number; readonly host: string; readonly adminPort: number }>
  /** The cluster's admin token, which GET /backup needs. */
  readonly adminToken?: string | undefined
  /** Peer TLS: copies are fetched over HTTPS with this node's certificate. */
  readonly peerTls?: PeerTls | undefined
}

/** Why a node whose peers compacted their logs past its own cannot serve. */
const behindLog = (start: number) =>
  `behind the retained log: every peer's log starts past this node's (at instance ${start}); it needs a copy from a peer`

/** At most one rebuild per this long: a node that keeps diverging is not rebuilt in a loop. */
const REBUILD_EVERY_MS = 60_000
/** A rebuild's progress goes to the log this often. */
const REBUILD_LOG_EVERY_MS = 10_000

/** The GTID of `domain` in a gtid_binlog_pos list ("0-1-5,1-2-3"); other domains make it "foreign". */
export const localPosition = (text: string, domain: number): { readonly gtid: Gtid | null; readonly foreign: ReadonlyArray<string> } => {
  const parts = text.split(",").map((p) => p.trim()).filter((p) => p.length > 0)
  let gtid: Gtid | null = null
  const foreign: Array<string> = []
  for (const p of parts) {
    const g = parseGtid(p)
    if (g === undefined || g.domain !== domain) foreign.push(p)
    else gtid = g
  }
  return { gtid, foreign }
}

/** The rows the role machine reads, as MariaDB (through mysql2) answers them. */
const PositionRow = Schema.Struct({ pos: Schema.NullOr(Schema.String) })
const IdRow = Schema.Struct({ id: Schema.Union([Schema.Number, Schema.NumberFromString]) })
const StatusRow = Schema.Struct({ Value: Schema.NumberFromString })
const ReplicaStatusRow = Schema.Struct({
  Slave_IO_Running: Schema.String,
  Slave_SQL_Running: Schema.String,
  Last_IO_Error: Schema.optional(Schema.String),
  Last_SQL_Error: Schema.optional(Schema.String)
})

export const make = Effect.fnUntraced(function*(options: NodeDatabaseOptions) {
  const cluster = yield* ClusterState
  const lease = yield* MasterLease
  const proxy = yield* Proxy
  const readinessCell = yield* ReadinessCell
  const { server: db, managed, replication, reinstall, restore } = yield* LocalMariaDb
  const binlogServer = yield* BinlogServer
  const routes = yield* RouteRefresh
  const commitPath = yield* CommitPath
  const roles = yield* DatabaseRoleCell
  const services = yield* Effect.context<ClusterState>()
  const monotonicMs = yield* Time.monotonicMs
  const { nodeId } = options
  const tickMs = options.tickMs ?? 50
  const idleTickMs = Math.max(tickMs, IDLE_TICK_MS)
  /** Routing is recomputed now whenever serving may have changed (fence, open, any role change). */
  const onServingChange = routes.refresh

  let role: DbRole = "starting"
  let local: Gtid | null = null
  /** Role transitions since start, and when the log moved (for lag in seconds). */
  let roleChanges = 0
  const lagClock = new LagClock()
  let lag: number | null = null
  let up = false
  let diverged: string | null = null
  let replicationError: string | null = null
  /** mariadbd generation the current role was set up on; a restart invalidates it. */
  let generation = -1
  let masterFiber: Fiber.Fiber<void, unknown> | undefined
  let masterScope: Scope.Closeable | undefined
  /** When the master last probed its database (monotonic ms). */
  let probedAt = -Infinity

  // The log is kept from this database's next transaction on (here and, while this node is
  // live, on its peers): compaction never takes what it has yet to apply, nor what a copy
  // being taken here will need (pins).
  const log = yield* PaxosLog
  const pins = new Map<symbol, number>()
  // A diverged database needs a copy, not the log: it holds nothing up.
  yield* log.retain(() => Math.min(cluster.neededFor(role === "diverged" ? Number.MAX_SAFE_INTEGER : (local?.seq ?? 0) + 1), ...pins.values()))
  const pinLog = (instance: number) =>
    Effect.acquireRelease(Effect.sync(() => {
      const key = Symbol()
      pins.set(key, instance)
      return key
    }), (key) => Effect.sync(() => pins.delete(key))).pipe(Effect.asVoid)

  /** What the lease sees: a replica that applied everything, or the master while it serves. */
  const publishReadiness = Effect.suspend(() => readinessCell.set(readinessOf(role, lag)))

  const setRole = (next: DbRole) =>
    Effect.suspend(() => {
      if (next === role) return Effect.void
      const prev = role
      role = next
      roleChanges++
      // Routing follows at once (e.g. a diverged node stops serving its RO port now).
      return Effect.all([
        SubscriptionRef.set(roles, next),
        publishReadiness,
        Effect.logInfo(`database role: ${prev} -> ${next}`),
        onServingChange
      ])
    })

  /** A statement with `?` parameters (values sent escaped by the driver). */
  const q = (sql: string, params?: ReadonlyArray<unknown>) =>
    db.query(sql, params).pipe(Effect.mapError((cause) => new DatabaseQueryFailed({ sql, cause })))
  /** A statement whose rows are decoded with `schema` (a wrong shape is a failed query). */
  const rowsOf = <S extends Schema.Top>(schema: S, sql: string, params?: ReadonlyArray<unknown>) =>
    Effect.flatMap(q(sql, params), (rows) =>
      Schema.decodeUnknownEffect(Schema.Array(schema))(rows).pipe(
        Effect.mapError((cause) => new DatabaseQueryFailed({ sql, cause }))
      )) as Effect.Effect<ReadonlyArray<S["Type"]>, DatabaseQueryFailed, S["DecodingServices"]>

  const domainOf = Effect.map(cluster.current, (s) => s.state.lastGtid?.domain ?? 0)

  const readLocal = Effect.gen(function*() {
    const [row] = yield* rowsOf(PositionRow, "SELECT @@GLOBAL.gtid_binlog_pos AS pos")
    const text = row?.pos ?? ""
    return localPosition(text, yield* domainOf)
  })

  /** Learns the log up to now: a Noop this node proposes, applied here. Waits for a majority. */
  const barrier = Effect.flatMap(Time.randomId, (nonce) => cluster.propose({ _tag: "Noop", node: nodeId, nonce })).pipe(
    Effect.retry(Schedule.spaced("100 millis")),
    Effect.asVoid
  )

  /** Why the local binlog is not a prefix of the chosen log (undefined: it is). */
  const extraOverLog = Effect.gen(function*() {
    const pos = yield* readLocal
    local = pos.gtid
    if (pos.foreign.length > 0) return `GTIDs in other domains: ${pos.foreign.join(",")}`
    const bad = yield* Effect.flip(checkPosition(pos.gtid)).pipe(Effect.option, Effect.provideContext(services))
    return bad._tag === "Some" ? bad.value.message : undefined
  })

  const startReplica = Effect.gen(function*() {
    yield* q("STOP SLAVE").pipe(Effect.ignore)
    // Semi-sync off releases only commits of chosen transactions: the comparison showed
    // nothing beyond the log.
    yield* q("SET GLOBAL rpl_semi_sync_master_enabled = OFF")
    yield* q("SET GLOBAL read_only = ON")
    yield* q("SET GLOBAL server_id = ?", [nodeId])
    const pos = yield* readLocal
    yield* q("SET GLOBAL gtid_slave_pos = ?", [pos.gtid === null ? "" : formatGtid(pos.gtid)])
    yield* q(
      "CHANGE MASTER TO MASTER_HOST=?, MASTER_PORT=?, MASTER_USER=?, MASTER_PASSWORD=?, " +
        "MASTER_USE_GTID=slave_pos, MASTER_HEARTBEAT_PERIOD=5, MASTER_CONNECT_RETRY=1",
      [binlogServer.address.host, binlogServer.address.port, replication.user, replication.password]
    )
    yield* q("START SLAVE")
  })

  /** The agent alone restarts a managed mariadbd, so that RW is always fenced before it runs again. */
  const waitUp = Effect.gen(function*() {
    const started = managed
      ? Effect.andThen(db.start.pipe(Effect.mapError((cause) => new DatabaseStartFailed({ operation: "start", cause }))), q("SELECT 1"))
      : q("SELECT 1")
    yield* started.pipe(
      Effect.tapError((e) => Effect.logWarning(`waiting for mariadbd: ${e.message}`)),
      // Bounded (about half a minute): a server that runs but never answers fails the step,
      // and the failure path restarts it (databaseRole.ts, afterFailure).
      Effect.retry({ schedule: cappedExponential("100 millis", "2 seconds"), times: 20 })
    )
    up = true
    generation = yield* db.generation
  })

  /** Ends every client session (not the agent's own logins, not replication threads). */
  const killClientSessions = Effect.gen(function*() {
    const rows = yield* rowsOf(
      IdRow,
      "SELECT ID AS id FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() " +
        "AND USER NOT IN ('system user', 'event_scheduler', ?, ?) AND COMMAND NOT IN ('Binlog Dump', 'Daemon')",
      [replication.user, db.user]
    )
    for (const r of rows) yield* q("KILL CONNECTION ?", [r.id]).pipe(Effect.ignore)
  })

  /** Commits waiting for a semi-sync ACK on this server. */
  const waitingCommits = Effect.map(
    rowsOf(StatusRow, "SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_wait_sessions'"),
    ([row]) => row?.Value ?? 0
  )

  /** Serves no one from now on (status, routing and the forward RO port say so at once). */
  const markDiverged = (why: string) =>
    Effect.gen(function*() {
      yield* proxy.refuseRo(true)
      yield* setRole("diverged")
      diverged = why
      yield* Effect.logError(`this node's database has diverged from the cluster and will not serve: ${why}`)
      yield* q("STOP SLAVE").pipe(Effect.ignore)
    })

  /** Compare with the log after a barrier; restart mariadbd once to truncate; else diverged. */
  const calibrate = Effect.gen(function*() {
    // Unknown until the replica reports again: nobody may take a stale 0 for caught up.
    lag = null
    yield* setRole("calibrating")
    yield* waitUp
    yield* q("SET GLOBAL read_only = ON")
    // A new node with an empty database takes a copy (with the donor's state) at once: it
    // need not learn the whole log first.
    if (options.copyWhenEmpty === true && rebuiltAt === -Infinity && (yield* readLocal).gtid === null && (yield* cluster.current).appliedUpTo === 0) {
      joiningEmpty = true
      // Until the copy's state is installed, the log is not fetched from the peers.
      if (pausedCatchup === undefined) {
        pausedCatchup = yield* Scope.make()
        yield* log.pauseCatchup.pipe(Scope.provide(pausedCatchup))
      }
      return yield* markDiverged("a new node with an empty database: it takes a copy of a peer's instead of replaying the whole log")
    }
    // A node the log left behind never applies the barrier: it learns so from its peers.
    const behind = yield* Effect.raceFirst(
      Effect.as(barrier, null),
      log.needsInstall.pipe(Effect.repeat({ schedule: Schedule.spaced("200 millis"), until: (n) => n !== null }))
    )
    if (behind !== null) return yield* markDiverged(behindLog(behind))
    let extra = yield* extraOverLog
    // Commits still waiting for an ACK could be ones that arrived after the comparison:
    // a crash restart settles them too (prepared ones are truncated, chosen ones come back
    // by replication).
    const waiting = yield* waitingCommits
    if ((extra !== undefined || waiting > 0) && managed) {
      yield* Effect.logWarning(
        `${extra !== undefined ? `local binlog beyond the chosen log (${extra})` : `${waiting} commits waiting for an ACK`}: ` +
          "restarting mariadbd to truncate un-ACKed transactions"
      )
      yield* db.restart.pipe(Effect.mapError((cause) => new DatabaseStartFailed({ operation: "restart", cause })))
      yield* waitUp
      yield* barrier
      extra = yield* extraOverLog
    }
    if (extra !== undefined) return yield* markDiverged(extra)
    yield* startReplica
    yield* setRole("replica")
  })

  /** The log's lastGtid at the last replica check, and when that was (monotonic ms). */
  let checkedLast: Gtid | null | undefined = undefined
  let checkedAt = -Infinity
  let threadsCheckedAt = -Infinity
  let rebuildLoggedAt = -Infinity

  /**
   * Replica health: position, lag, divergence, replica thread. Asked of MariaDB only when
   * it can have changed (the log moved, lag not yet 0) or once a second while idle: an idle
   * node stays idle, a catching-up one is watched closely (readiness for election).
   */
  const monitorReplica = Effect.gen(function*() {
    const behind = yield* log.needsInstall
    if (behind !== null) return yield* markDiverged(behindLog(behind))
    const last = (yield* cluster.current).state.lastGtid
    const now = monotonicMs()
    if (lag === 0 && checkedLast !== undefined && gtidEquals(last, checkedLast) && now - checkedAt < IDLE_REPLICA_CHECK_MS) return
    checkedLast = last
    checkedAt = now
    if (last !== null) lagClock.observe(last.seq, now)
    const extra = yield* extraOverLog
    lag = last === null ? 0 : last.seq - (local?.seq ?? 0)
    yield* publishReadiness
    if (rebuilding !== undefined) {
      const p = progress()!
      if (lag === 0) {
        yield* Effect.logInfo(`rebuild done: ${p.appliedTxns} transactions replayed in ${p.elapsedS} s (${p.txnsPerS}/s)`)
        rebuilding = undefined
      } else if (now - rebuildLoggedAt >= REBUILD_LOG_EVERY_MS) {
        rebuildLoggedAt = now
        yield* Effect.logInfo(`rebuild: ${p.appliedTxns} of ${p.targetTxns} transactions (${p.percent}%), ${p.txnsPerS}/s, about ${p.etaS ?? "?"} s left`)
      }
    }
    if (extra !== undefined) return yield* markDiverged(extra)
    // The replica threads: whenever there is something to apply, and now and then while idle.
    if (lag === 0 && now - threadsCheckedAt < IDLE_THREAD_CHECK_MS) return
    threadsCheckedAt = now
    const [s] = yield* rowsOf(ReplicaStatusRow, "SHOW SLAVE STATUS")
    const io = s?.Slave_IO_Running ?? "No"
    const sql = s?.Slave_SQL_Running ?? "No"
    const err = [s?.Last_IO_Error, s?.Last_SQL_Error].filter((x) => x !== undefined && x.length > 0).join("; ")
    replicationError = err.length > 0 ? err : null
    if (sql !== "Yes" || io === "No") {
      yield* Effect.logWarning(`replica thread not running (io ${io}, sql ${sql}${err ? `: ${err}` : ""}): starting it`)
      yield* q("START SLAVE").pipe(Effect.ignore)
    }
  })

  /** RW closes now: the forward listener refuses and drops its relays, local routing is withdrawn. */
  const fenceRw = Effect.gen(function*() {
    yield* proxy.refuseRw(true)
    const closed = yield* proxy.closeAllRw
    yield* onServingChange
    if (closed > 0) yield* Effect.logInfo(`fenced: closed ${closed} forwarded RW connections`)
  })

  const promote = Effect.gen(function*() {
    yield* barrier
    const caughtUp = Effect.gen(function*() {
      const pos = yield* readLocal
      const last = (yield* cluster.current).state.lastGtid
      if (!gtidEquals(pos.gtid, last)) {
        return yield* new NotCaughtUp({ local: pos.gtid && formatGtid(pos.gtid), log: last && formatGtid(last) })
      }
      return last
    })
    // Bounded: a replica that cannot catch up gives the lease back (step-down resigns it).
    const startAfter = yield* caughtUp.pipe(Effect.retry(Schedule.spaced("20 millis")), Effect.timeout("15 seconds"))
    const snapshot = yield* cluster.current
    if (snapshot.state.master !== nodeId) return yield* new LeaseMovedOn({ master: snapshot.state.master })
    const epoch = snapshot.state.epoch
    yield* q("STOP SLAVE")
    yield* q("SET GLOBAL server_id = ?", [MASTER_SERVER_ID_BASE + epoch])
    yield* q("SET GLOBAL rpl_semi_sync_master_enabled = ON")
    const sync = BinlogSync.run({
      capture: {
        host: db.host,
        port: db.port,
        // A managed server over its socket: a secure transport (require_secure_transport), and no TCP stack.
        ...(managed && db.socket !== undefined ? { socketPath: db.socket } : {}),
        user: replication.user,
        password: replication.password,
        serverId: captureServerId(nodeId),
        // A broken connection is seen at once; heartbeats only find a silent one.
        heartbeatMs: 5_000
      },
      node: nodeId,
      epoch,
      startAfter,
      commitPath
    })
    const fiber = yield* Effect.forkChild(sync)
    // Sessions opened while this was a replica keep its server_id, under which a replica
    // would later skip their transactions: none of them may write here.
    yield* killClientSessions
    yield* q("SET GLOBAL read_only = OFF")
    yield* proxy.refuseRw(false)
    yield* setRole("master")
    yield* onServingChange
    yield* Effect.logInfo(`serving as master, epoch ${epoch}, from ${startAfter === null ? "the start" : formatGtid(startAfter)}`)
    yield* Fiber.join(fiber)
  }).pipe(Effect.provideContext(services))

  const stopMaster = Effect.gen(function*() {
    const scope = masterScope
    masterScope = undefined
    masterFiber = undefined
    if (scope !== undefined) yield* Scope.close(scope, Exit.void)
    // An interrupted promotion may have opened RW between the first fence and here.
    yield* proxy.refuseRw(true)
    yield* proxy.closeAllRw
  })

  const stepDown = (why: string) =>
    Effect.gen(function*() {
      yield* Effect.logWarning(`stepping down: ${why}`)
      // Fenced before the role (and with it readiness) changes: the lease resigns on a
      // readiness drop, and by then RW is closed here.
      yield* fenceRw
      yield* setRole("stepping-down")
      yield* stopMaster
      // read_only before anything else reaches the database; a hung server is restarted.
      const fenced = yield* q("SET GLOBAL read_only = ON").pipe(Effect.timeout("2 seconds"), Effect.result)
      if (fenced._tag === "Failure" && managed) {
        yield* Effect.logWarning("read_only did not take: restarting mariadbd")
        yield* db.restart.pipe(Effect.ignore)
      }
      yield* calibrate
    })

  /** Starts the master pipeline (promotion, then the commit path) in a scope of its own. */
  const startPromotion = Effect.gen(function*() {
    // The scope first: a lease loss from here on closes it (stopMaster), so no promotion
    // forked into it can outlive the fence.
    const scope = yield* Scope.make()
    masterScope = scope
    yield* setRole("promoting")
    masterFiber = yield* promote.pipe(
      Effect.tapCause((cause) => Effect.logWarning("master role ended", cause)),
      Effect.forkIn(scope)
    )
  })

  /** The master's own position (status), and a health probe: a hung mariadbd must not keep the lease. */
  const probeMaster = Effect.gen(function*() {
    probedAt = monotonicMs()
    const probe = yield* readLocal.pipe(Effect.timeout("3 seconds"), Effect.result)
    if (probe._tag === "Failure") return yield* stepDown(`mariadbd does not answer: ${probe.failure.message}`)
    local = probe.success.gtid
  })

  /**
   * A diverged server (or one the log left behind, or an operator's) is replaced whole: by a
   * copy of a healthy peer's database (a replica that serves reads, else the master), or,
   * with no peer to give one while the log still starts at its first transaction, by a new
   * empty server that replays the chosen log. The old dir is kept as `<dir>.diverged`; the
   * role machine starts over on the new server.
   */
  let rebuiltAt = -Infinity
  /** This node joined with an empty database: its first copy brings the donor's state too. */
  let joiningEmpty = false
  let pausedCatchup: Scope.Closeable | undefined
  let rebuildRequested = false
  /** The rebuild whose replay is under way: why, when, and how many transactions the log had then. */
  let rebuilding: { readonly reason: string; readonly startedAt: number; readonly from: number; readonly target: number } | undefined
  /** The copy from a peer under way, bytes received so far. */
  let copying: { readonly reason: string; readonly donor: number; readonly startedAt: number; copied: number; readonly total: number } | undefined
  const progress = () =>
    copying !== undefined
      ? copyProgress({ reason: copying.reason, donor: copying.donor, elapsedMs: monotonicMs() - copying.startedAt, copiedBytes: copying.copied, totalBytes: copying.total })
      : rebuilding === undefined
      ? null
      : rebuildProgress({
        reason: rebuilding.reason,
        elapsedMs: monotonicMs() - rebuilding.startedAt,
        applied: Math.max((local?.seq ?? 0) - rebuilding.from, 0),
        target: Math.max(rebuilding.target - rebuilding.from, 0)
      })

  /** A copy of one donor's database in place of this one (and its state, when the log left this node behind). */
  const copyFrom = (donor: { readonly nodeId: number; readonly host: string; readonly adminPort: number }, reason: string) =>
    Effect.scoped(Effect.gen(function*() {

      const offer = yield* fetchCopy(donor.host, donor.adminPort, options.adminToken,
        options.peerTls === undefined ? undefined : { tls: options.peerTls, donorId: donor.nodeId })
      const state = { reason, donor: donor.nodeId, startedAt: monotonicMs(), copied: 0, total: offer.dataBytes }
      copying = state
      offer.body.on("data", (chunk: Buffer) => {
        state.copied += chunk.length
      })
      const restored = yield* restore(offer.body)
      // Behind every peer's log: this node takes the donor's state from where the copy began.
      const needsInstall = yield* log.needsInstall
      // Behind every peer's log, or new: this node starts from the donor's state.
      if ((needsInstall !== null || joiningEmpty) && offer.snapshot.appliedUpTo > (yield* cluster.current).appliedUpTo) {
        yield* cluster.install(offer.snapshot)
        // The member sets from there on come with the state (the founding ones, if it has none).
        yield* log.install(offer.snapshot.appliedUpTo, offer.snapshot.state.configs ?? [])
        yield* Effect.logInfo(`installed node ${donor.nodeId}'s state at instance ${offer.snapshot.appliedUpTo}`)
      }
      yield* Effect.logInfo(
        `rebuild: copied ${Math.round(state.copied / 1024 / 1024)} MB from node ${donor.nodeId} in ${Math.round(monotonicMs() - state.startedAt)} ms, ` +
          `at ${restored.gtid === null ? "the start" : formatGtid(restored.gtid)}`
      )
      return restored
    })).pipe(Effect.ensuring(Effect.sync(() => {
      copying = undefined
    })))

  /**
   * The members as the log names them (with their admin ports); a new node that has not
   * learned them yet asks a configured member's /status; else as configured.
   */
  const membersNow = Effect.gen(function*() {
    const known = (yield* cluster.current).state.membership
    if (known !== undefined) return known.map((m) => ({ nodeId: m.nodeId, host: m.host, adminPort: m.adminPort, voter: m.voter }))
    const configured = (options.donors ?? []).map((d) => ({ ...d, voter: true }))
    if (options.copyWhenEmpty !== true) return configured
    for (const d of configured.filter((x) => x.nodeId !== nodeId)) {
      const s = yield* fetchStatus({ address: joinHostPort(d.host, d.adminPort), tls: options.peerTls }, 2_000, options.adminToken)
      if (!("error" in s)) return s.members.map((m) => ({ nodeId: m.nodeId, host: m.host, adminPort: m.adminPort, voter: m.voter ?? true }))
    }
    return configured
  })

  /** Donors in order of preference: replicas that serve reads, then the master; never this node. */
  const donorsNow = Effect.gen(function*() {
    const flags = yield* log.advertised(5_000)
    const master = (yield* cluster.current).state.master
    const others = (yield* membersNow).filter((d) => d.nodeId !== nodeId)
    const readable = others.filter((d) => ((flags.get(d.nodeId) ?? 0) & SERVES_READS) !== 0)
    return { readable, all: [...readable, ...others.filter((d) => d.nodeId === master && !readable.includes(d))] }
  })

  const rebuild = Effect.gen(function*() {
    rebuiltAt = monotonicMs()
    rebuildRequested = false
    const reason = diverged !== null ? `diverged: ${diverged}` : "requested by an operator"
    yield* Effect.logWarning(`rebuilding this node's database (${diverged !== null ? `it had diverged: ${diverged}` : "an operator asked for it"})`)
    // Off the routes first: nobody is sent to a server about to be set aside.
    yield* setRole("starting")
    let copied: { readonly gtid: Gtid | null; readonly aside: string } | undefined
    // A new node hears the members' read flags only once it is added: it waits for a
    // replica to copy (bounded), and takes the master's only if none turns up.
    const donors = joiningEmpty
      ? (yield* donorsNow.pipe(
        Effect.repeat({ schedule: Schedule.spaced("500 millis"), until: (d) => d.readable.length > 0 }),
        Effect.timeoutOrElse({ duration: "60 seconds", orElse: () => donorsNow })
      )).all
      : (yield* donorsNow).all
    for (const donor of donors) {
      const r = yield* Effect.result(copyFrom(donor, reason))
      if (r._tag === "Success") {
        copied = r.success
        break
      }
      yield* Effect.logWarning(`rebuild: no copy from node ${donor.nodeId}: ${r.failure.message}`)
    }
    if (pausedCatchup !== undefined) {
      yield* Scope.close(pausedCatchup, Exit.void)
      pausedCatchup = undefined
    }
    let aside: string
    if (copied !== undefined) aside = copied.aside
    else {
      if ((yield* cluster.logStart).seq > 1 || (yield* log.needsInstall) !== null) {
        return yield* new DatabaseStartFailed({
          operation: "rebuild",
          cause: "no peer gave a copy (none serves reads, or each refused) and the log no longer holds every transaction; tried again later"
        })
      }
      aside = yield* reinstall.pipe(Effect.mapError((cause) => new DatabaseStartFailed({ operation: "rebuild", cause })))
      yield* Effect.logWarning("no peer gave a copy: a new empty server replays the chosen log")
    }
    yield* Effect.logWarning(`the old datadir is kept in ${aside}`)
    // The replay left: from where the copy is (nothing for a new empty server) to the log's end now.
    rebuilding = { reason, startedAt: monotonicMs(), from: copied?.gtid?.seq ?? 0, target: (yield* cluster.current).state.lastGtid?.seq ?? 0 }
    // What was known of the old server says nothing of the new one.
    local = copied?.gtid ?? null
    lag = null
    diverged = null
    yield* proxy.refuseRo(false)
  })

  /** One step of the role machine (databaseRole.ts decides, this carries it out). */
  const tick = Effect.gen(function*() {
    const next = nextStep({
      role,
      leaseHeld: yield* lease.isMaster,
      serverUp: yield* db.up,
      serverRestarted: (yield* db.generation) !== generation,
      pipelineRunning: masterFiber !== undefined && masterFiber.pollUnsafe() === undefined,
      probeDue: monotonicMs() - probedAt >= MASTER_PROBE_EVERY_MS,
      mayRebuild: managed && (options.rebuildAuto ?? true) && monotonicMs() - rebuiltAt >= REBUILD_EVERY_MS,
      rebuildRequested
    })
    switch (next._tag) {
      case "Calibrate":
        return yield* calibrate
      case "Promote":
        return yield* startPromotion
      case "StepDown":
        return yield* stepDown(next.reason)
      case "WatchReplica":
        return yield* monitorReplica
      case "ProbeMaster":
        return yield* probeMaster
      case "Rebuild":
        return yield* rebuild
      case "Wait":
        return
    }
  })

  /** Wakes the role loop before its timer (a lease event). */
  const wake = yield* Queue.sliding<void>(1)
  // Driven by lease events and, for the master, by its mariadbd exiting (a dead server must
  // give the lease up at once); a replica catching up is watched closely (its readiness
  // decides elections); otherwise an idle pace (a hung server is found by the master's probe).
  const pause = Effect.gen(function*() {
    const woken = mayServeRw(role) ? Effect.raceFirst(Queue.take(wake), db.exited) : Queue.take(wake)
    const last = (yield* cluster.current).state.lastGtid
    const logMoved = !gtidEquals(last, checkedLast ?? null)
    yield* Effect.timeoutOption(woken, pauseMs({ role, lag, logMoved, tickMs, idleTickMs, busyReplicaTickMs: BUSY_REPLICA_TICK_MS }))
  })
  yield* tick.pipe(
    Effect.catchCause((cause) =>
      Effect.gen(function*() {
        yield* Effect.logWarning(`database step failed in role ${role}`, cause)
        up = (yield* q("SELECT 1").pipe(Effect.timeout("1 second"), Effect.result))._tag === "Success"
        const next = afterFailure({ role, serverAnswers: up, managed })
        if (next.stepDown) yield* stepDown("database step failed").pipe(Effect.ignore)
        if (next.restartServer) {
          yield* Effect.logWarning("mariadbd does not answer: restarting it")
          yield* db.restart.pipe(Effect.ignore)
        }
        yield* setRole(next.next(role))
      })
    ),
    Effect.andThen(pause),
    Effect.forever,
    forkScopedLogged("database: the role loop")
  )

  // The lease's own step-down is acted on at once: RW fenced and the master pipeline
  // stopped (a promotion under way cannot open RW after the fence); the role follows.
  const events = yield* lease.events
  yield* events.pipe(
    Stream.runForEach((e) =>
      Effect.andThen(
        e._tag === "SteppedDown" && mayServeRw(role) ? Effect.andThen(fenceRw, stopMaster) : Effect.void,
        Queue.offer(wake, undefined)
      )
    ),
    forkScopedLogged("database: following lease events")
  )

  yield* Effect.addFinalizer(() => stopMaster)

  const refused = (reason: string) => new SwitchoverRefused({ reason })
  /** The members a switchover may hand over to (caught up: they say so on their heartbeats). */
  const caughtUpPeers = Effect.gen(function*() {
    const flags = yield* log.advertised(2_000)
    // Only a voter may take the lease.
    return (yield* membersNow).filter((d) => d.voter).map((d) => d.nodeId).filter((id) => id !== nodeId && ((flags.get(id) ?? 0) & CAUGHT_UP) !== 0)
  })

  const switchover = (to: number | undefined) =>
    Effect.gen(function*() {
      if (role !== "master" || !(yield* lease.isMaster)) {
        const master = (yield* cluster.current).state.master
        return yield* refused(`node ${nodeId} is not the serving master (role ${role}; master: ${master ?? "none"})`)
      }
      const members = (yield* membersNow).filter((d) => d.voter).map((d) => d.nodeId)
      if (to === nodeId) return yield* refused(`node ${nodeId} is the master already`)
      if (to !== undefined && !members.includes(to)) return yield* refused(`node ${to} is not a voting member (voters: ${members.join(", ")})`)
      if (to === undefined && members.length < 2) return yield* refused("there is no other member to hand over to")
      // A target behind is waited for (bounded): RW stays open meanwhile.
      const picked = yield* Effect.map(caughtUpPeers, (ids) => to === undefined ? ids[0] : ids.includes(to) ? to : undefined).pipe(
        Effect.repeat({ schedule: Schedule.spaced("100 millis"), until: (t) => t !== undefined }),
        Effect.timeoutOrElse({
          duration: `${SWITCHOVER_TARGET_WAIT_MS} millis`,
          orElse: () => Effect.fail(refused(
            to === undefined
              ? `no replica has caught up with the log within ${SWITCHOVER_TARGET_WAIT_MS / 1000} s`
              : `node ${to} has not caught up with the log (or does not serve) within ${SWITCHOVER_TARGET_WAIT_MS / 1000} s`
          ))
        })
      )
      const target = picked!
      const epoch = (yield* cluster.current).state.epoch
      const t0 = monotonicMs()
      yield* Effect.logInfo(`switchover to node ${target}: closing RW and waiting for the last commits to be chosen`)
      // RW closed, then no session may commit; what is committing finishes into the log.
      yield* fenceRw
      const drained = yield* Effect.gen(function*() {
        yield* q("SET GLOBAL read_only = ON").pipe(Effect.timeout(`${SWITCHOVER_DRAIN_MS} millis`))
        yield* Effect.gen(function*() {
          const pos = yield* readLocal
          const last = (yield* cluster.current).state.lastGtid
          return gtidEquals(pos.gtid, last) && (yield* waitingCommits) === 0
        }).pipe(
          Effect.repeat({ schedule: Schedule.spaced("2 millis"), until: (done) => done }),
          Effect.timeout(`${SWITCHOVER_DRAIN_MS} millis`)
        )
      }).pipe(Effect.result)
      if (drained._tag === "Failure") {
        // Still the master: serve again, the switchover did not happen.
        if (role === "master" && (yield* lease.isMaster)) {
          yield* q("SET GLOBAL read_only = OFF").pipe(Effect.ignore)
          yield* proxy.refuseRw(false)
          yield* onServingChange
        }
        return yield* refused(`this node's last commits did not reach the log within ${SWITCHOVER_DRAIN_MS / 1000} s: RW is open again`)
      }
      yield* lease.handOver(target).pipe(Effect.mapError((e) => refused(e.message)))
      const after = yield* cluster.current.pipe(
        Effect.repeat({ schedule: Schedule.spaced("5 millis"), until: (s) => s.state.master !== null && s.state.epoch > epoch }),
        Effect.timeoutOrElse({
          duration: `${SWITCHOVER_TAKEOVER_MS} millis`,
          orElse: () => Effect.fail(refused(`handed over to node ${target}, but no new master within ${SWITCHOVER_TAKEOVER_MS / 1000} s`))
        })
      )
      const done: SwitchoverDone = { from: nodeId, to: target, master: after.state.master!, epoch: after.state.epoch, handoverMs: Math.round(monotonicMs() - t0) }
      yield* Effect.logInfo(`switchover done: node ${done.master} is master (epoch ${done.epoch}) ${done.handoverMs} ms after RW closed here`)
      return done
    })

  return NodeDatabase.of({
      status: Effect.sync(() => ({
        role,
        localGtid: local === null ? null : formatGtid(local),
        lag,
        lagSeconds: lag === null ? null : lag === 0 ? 0 : lagClock.secondsBehind(local?.seq ?? 0, monotonicMs()),
        roleChanges,
        up,
        diverged,
        replicationError,
        rebuild: progress()
      })),
      roles,
      pinLog,
      switchover,
      serving: Effect.map(lease.isMaster, (m) => m && role === "master"),
      writeAsMaster: (statements) =>
        Effect.gen(function*() {
          // One term throughout: while this node holds the lease as master its semi-sync is on,
          // so each statement returned only once the log had it. A root session on the socket
          // passes read_only, so the term is asked before each statement and after the last.
          const term = (yield* cluster.current).state.epoch
          const sameTerm = Effect.map(cluster.current, (s) => role === "master" && lease.holdsNow() && s.state.epoch === term && s.state.master === nodeId)
          for (const st of statements) {
            if (!(yield* sameTerm)) return yield* new NotServingRw({ role, master: (yield* cluster.current).state.master })
            yield* q(st.sql, st.params)
          }
          const [row] = yield* rowsOf(PositionRow, "SELECT @@GLOBAL.gtid_binlog_pos AS pos")
          if (!(yield* sameTerm)) return yield* new MasterTermEnded({ epoch: term })
          return row?.pos ?? ""
        }),
      requestRebuild: Effect.gen(function*() {
        if (!managed) return { accepted: false, message: "the server is attached (run by the operator): rebuild it by hand" }
        if (mayServeRw(role) || role === "stepping-down" || (yield* lease.isMaster)) {
          return { accepted: false, message: `this node is ${role} and may serve RW: move the master elsewhere first` }
        }
        rebuildRequested = true
        yield* Queue.offer(wake, undefined)
        return { accepted: true, message: `rebuild requested (role ${role}): the database is set aside and replaced by a copy of a healthy peer's` }
      })
    })
})

export const layer = (options: NodeDatabaseOptions) => Layer.effect(NodeDatabase, make(options))
