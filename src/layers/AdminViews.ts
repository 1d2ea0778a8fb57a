/**
 * What the admin port shows an operator besides /status (docs/operations.md): health probes
 * for load balancers, /metrics for Prometheus, the status page with its /cluster and
 * /history data, and POST /users. Built from the node's services and its status report.
 */
import { Clock, Effect, Result, Schedule } from "effect"
import { readdir, stat } from "node:fs/promises"
import { basename, dirname, join } from "node:path"
import { userInfo } from "node:os"
import { monitorEventLoopDelay } from "node:perf_hooks"
import type { Health, View } from "../services/admin/Admin.js"
import * as Metrics from "../services/admin/Metrics.js"
import { STATUS_PAGE_HTML } from "../services/admin/statusPage.js"
import { ClusterState } from "../services/cluster/ClusterState.js"
import { MasterLease } from "../services/cluster/MasterLease.js"
import { PaxosLog } from "../services/paxos/PaxosLog.js"
import { adminGet, fetchStatus } from "../client/StatusClient.js"
import * as PeerTls from "../services/tls/PeerTls.js"
import { forkScopedLogged } from "../services/fibers.js"
import { layoutOf } from "../services/database/MariaDbLayout.js"
import { managedDirOf } from "../services/database/LocalMariaDb.js"
import { adminTokenOf, type NodeConfig } from "../config/NodeConfig.js"
import type { NodeStatus } from "../domain/cluster/nodeStatus.js"
import { clusterHealth, isPrimary, type MemberReport, reachesQuorum, replicaWithin, servesReads, unhealthyReason } from "../domain/cluster/health.js"
import { History } from "../domain/cluster/history.js"
import { Histogram } from "../domain/metrics/histogram.js"
import { checkNewUser, userStatements } from "../domain/mysql/accounts.js"
import type { DatabaseNodeShape } from "./DatabaseNode.js"
import { localPosition } from "../services/database/NodeDatabase.js"
import { formatGtid } from "../domain/cluster/gtid.js"
import { joinHostPort } from "../domain/wire/address.js"

/** The agent's version, as /metrics and the page report it. */
export const VERSION = "0.1.0"

/** The status page's charts: one sample every 5 s, 15 minutes of them. */
const HISTORY_INTERVAL_MS = 5_000
const HISTORY_SAMPLES = 180
/** How long the page's /cluster waits for each peer. */
const PEER_TIMEOUT_MS = 1_000

/** Bytes of the regular files directly in `dir` whose names pass `keep` (0 when it is missing); off the event loop. */
const filesBytes = (dir: string, keep: (name: string) => boolean = () => true): Effect.Effect<number> =>
  Effect.promise(async () => {
    const names = await readdir(dir).catch(() => [] as Array<string>)
    // A file removed between the listing and the stat (a purge) is not there.
    const sizes = await Promise.all(names.filter(keep).map((name) => stat(join(dir, name)).then((st) => (st.isFile() ? st.size : 0), () => 0)))
    return sizes.reduce((a, b) => a + b, 0)
  })

/** A non-negative number from a query parameter (undefined when absent; NaN when not a number). */
const bound = (query: URLSearchParams, key: string): number | undefined => {
  const v = query.get(key)
  if (v === null) return undefined
  return /^[0-9]+(\.[0-9]+)?$/.test(v) ? Number(v) : NaN
}

const probeBody = (s: NodeStatus, extra: Record<string, unknown> = {}) => ({
  nodeId: s.nodeId,
  role: s.role,
  master: s.master,
  epoch: s.epoch,
  database: s.database === undefined ? null : s.database.diverged !== null ? "diverged" : s.database.up ? s.database.role : "down",
  lag: s.database?.lag ?? null,
  lagSeconds: s.database?.lagSeconds ?? null,
  ...extra
})

export const make = (config: NodeConfig, status: Effect.Effect<NodeStatus>, database: DatabaseNodeShape | undefined) =>
  Effect.gen(function*() {
    const log = yield* PaxosLog
    const cluster = yield* ClusterState
    const lease = yield* MasterLease
    const token = adminTokenOf(config)

    // --- history (the page's charts) ------------------------------------------------
    const history = new History(HISTORY_INTERVAL_MS, HISTORY_SAMPLES)
    const noCommits = new Histogram()
    yield* Effect.gen(function*() {
      const snapshot = yield* cluster.current
      const lag = database === undefined ? null : (yield* database.status).database?.lag ?? null
      history.record({
        t: yield* Clock.currentTimeMillis,
        gtidSeq: snapshot.state.lastGtid?.seq ?? 0,
        commitTotal: database?.commitPath.stages.total ?? noCommits,
        lagTxns: lag
      })
    }).pipe(Effect.repeat(Schedule.spaced(`${HISTORY_INTERVAL_MS} millis`)), forkScopedLogged("admin: history sampler"))
    const historyBody = () => ({ from: config.nodeId, intervalMs: history.intervalMs, samples: history.samples() })

    // --- the page's /cluster ----------------------------------------------------------
    // Peers are asked over HTTPS with this node's certificate when it has one, and the token goes only to a peer that asks for it.
    const peerTls = yield* PeerTls.loadOptional(config.tls, config.nodeId).pipe(Effect.orElseSucceed(() => undefined))
    const fetchHistory = (address: string) =>
      Effect.tryPromise({
        try: (signal) => adminGet({ address, tls: peerTls }, "/history", signal, token).then((r) => (r.status === 200 ? r.body : Promise.reject(new Error(`HTTP ${r.status}`)))),
        catch: (e) => e
      }).pipe(Effect.timeout(`${PEER_TIMEOUT_MS} millis`), Effect.option)
    const clusterBody = Effect.gen(function*() {
      const self = yield* status
      const reports = yield* Effect.forEach(self.members, (m): Effect.Effect<MemberReport & { readonly admin: string }> => {
        const admin = joinHostPort(m.host, m.adminPort)
        if (m.nodeId === self.nodeId) return Effect.succeed({ nodeId: m.nodeId, address: admin, admin, status: self })
        return Effect.map(fetchStatus({ address: admin, tls: peerTls }, PEER_TIMEOUT_MS, token), (s) =>
          "error" in s ? { nodeId: m.nodeId, address: admin, admin, error: s.error } : { nodeId: m.nodeId, address: admin, admin, status: s })
      }, { concurrency: "unbounded" })
      // The charts follow the master (it alone measures commit latency); this node's own samples otherwise.
      const master = self.master === null || self.master === self.nodeId ? undefined : self.members.find((m) => m.nodeId === self.master)
      const remote = master === undefined ? undefined : yield* fetchHistory(joinHostPort(master.host, master.adminPort))
      return {
        clusterId: self.clusterId,
        self: self.nodeId,
        generatedAt: yield* Clock.currentTimeMillis,
        health: clusterHealth(reports),
        members: reports.map((r) => ("status" in r ? { nodeId: r.nodeId, admin: r.admin, status: r.status } : { nodeId: r.nodeId, admin: r.admin, error: r.error })),
        history: remote !== undefined && remote._tag === "Some" ? remote.value : historyBody()
      }
    })

    // Every open page asks every 2 s and each answer asks every member: one gathering at a time, reused for a second.
    const clusterView = yield* Effect.cachedWithTTL(clusterBody, "1 second")

    // --- /metrics -------------------------------------------------------------------------
    // The event loop's delay over fixed 30 s windows (scrapers, however many, do not reset each other's).
    const loopDelay = monitorEventLoopDelay({ resolution: 100 })
    loopDelay.enable()
    yield* Effect.addFinalizer(() => Effect.sync(() => loopDelay.disable()))
    let loopDelayP99Seconds = 0
    yield* Effect.sync(() => {
      const p99 = loopDelay.percentile(99) / 1e9
      loopDelayP99Seconds = Number.isFinite(p99) ? p99 : 0
      loopDelay.reset()
    }).pipe(Effect.repeat(Schedule.spaced("30 seconds")), Effect.delay("30 seconds"), forkScopedLogged("admin: event loop delay window"))
    const startTimeSeconds = Math.round(performance.timeOrigin / 1000)
    const stateDir = join(config.dataDir, "state")
    const managed = config.mariadb !== undefined && (config.mariadb.mode ?? "managed") === "managed"
    const binlogBase = managed ? layoutOf(managedDirOf(config.dataDir)).binlogBase : undefined
    const metricsBody = Effect.gen(function*() {
      const [s, p, snapshot, l] = [yield* status, yield* log.status, yield* cluster.current, yield* lease.status]
      const d = s.database
      const cpu = process.cpuUsage()
      const memory = process.memoryUsage()
      const binlogBytes = binlogBase === undefined
        ? null
        : yield* filesBytes(dirname(binlogBase), (name) => name.startsWith(`${basename(binlogBase)}.`) && !name.endsWith(".index"))
      const stateBytes = yield* filesBytes(stateDir)
      const rebuild = d?.rebuild ?? null
      return Metrics.render({
        clusterId: config.clusterId,
        nodeId: config.nodeId,
        version: VERSION,
        paxos: {
          role: p.role,
          chosenUpTo: p.chosenUpTo,
          compactedBelow: p.compactedBelow,
          needsInstall: p.needsInstall !== null,
          counters: p.counters,
          writeMs: p.histograms.writeMs,
          roundMs: p.histograms.roundMs,
          peers: s.members.filter((m) => m.nodeId !== config.nodeId).map((m) => ({ nodeId: m.nodeId, reachable: m.reachable }))
        },
        cluster: {
          master: snapshot.state.master,
          epoch: snapshot.state.epoch,
          lastGtidSeq: snapshot.state.lastGtid?.seq ?? 0,
          appliedInstance: snapshot.appliedUpTo,
          membership: s.membership ?? "voter"
        },
        lease: { held: l.isMaster, remainingMs: l.leaseRemainingMs },
        commit: database === undefined ? undefined : {
          stages: database.commitPath.stages,
          ...(({ entries, transactions, bytes }) => ({ entries, transactions, bytes }))(database.commitPath.report())
        },
        database: d === undefined ? undefined : {
          role: d.role,
          up: d.up,
          diverged: d.diverged !== null,
          lag: d.lag,
          lagSeconds: d.lagSeconds ?? null,
          roleChanges: d.roleChanges ?? 0,
          rebuild: rebuild === null ? null : {
            phase: rebuild.phase ?? "replay",
            percent: rebuild.percent,
            copiedBytes: rebuild.copiedMb === undefined ? undefined : Math.round(rebuild.copiedMb * 1024 * 1024)
          }
        },
        proxy: s.proxy === undefined ? undefined : Object.fromEntries(Object.entries(s.proxy.listeners).map(([name, x]) => [name, {
          open: x.open,
          accepted: x.accepted,
          refused: x.refused,
          bytesIn: x.bytesIn ?? 0,
          bytesOut: x.bytesOut ?? 0
        }])),
        storage: { paxosLogBytes: p.logBytes, stateBytes, binlogBytes },
        process: {
          cpuSeconds: (cpu.user + cpu.system) / 1e6,
          residentBytes: memory.rss,
          heapUsedBytes: memory.heapUsed,
          startTimeSeconds,
          eventLoopDelayP99Seconds: loopDelayP99Seconds
        }
      })
    })

    // --- health probes ---------------------------------------------------------------------
    const probe = (answer: (s: NodeStatus, query: URLSearchParams) => Health) => (query: URLSearchParams) => Effect.map(status, (s) => answer(s, query))
    const primary = probe((s) => ({
      ok: isPrimary(s),
      body: probeBody(s, isPrimary(s) ? {} : { reason: s.role === "master" ? "holds the lease, but its database does not serve writes yet" : `not the master (master: ${s.master ?? "none"})` })
    }))
    const lagBound = (query: URLSearchParams) => ({ maxLag: bound(query, "lag"), maxLagSeconds: bound(query, "lagSeconds") })
    const badBound = (b: ReturnType<typeof lagBound>) => Number.isNaN(b.maxLag) || Number.isNaN(b.maxLagSeconds)
    const replica = probe((s, query) => {
      const b = lagBound(query)
      if (badBound(b)) return { ok: false, body: probeBody(s, { reason: "lag and lagSeconds take a number (transactions, seconds)" }) }
      const ok = replicaWithin(s, b)
      const why = unhealthyReason(s) ??
        (!servesReads(s) ? `not a replica (${s.database?.role ?? "no database"})` : !reachesQuorum(s) ? "cut off from the majority: its reads may be stale" : "behind the lag bound")
      return { ok, body: probeBody(s, ok ? {} : { reason: why }) }
    })
    const readOnly = probe((s, query) => {
      const b = lagBound(query)
      const ok = !badBound(b) && (isPrimary(s) || replicaWithin(s, b))
      return { ok, body: probeBody(s, ok ? {} : { reason: unhealthyReason(s) ?? "neither the serving master nor a replica within the bound" }) }
    })
    const health = probe((s) => {
      const why = unhealthyReason(s)
      return { ok: why === undefined, body: probeBody(s, why === undefined ? {} : { reason: why }) }
    })
    // Ready: healthy, and its client ports can serve (a master to route RW to); a log-only node: a master is known.
    const ready = probe((s) => {
      const why = unhealthyReason(s) ??
        (!reachesQuorum(s) ? "cut off from the majority of the members" : undefined) ??
        (s.database === undefined
          ? s.master === null ? "no master (election in progress or no majority)" : undefined
          : s.proxy?.routes.rw.startsWith("none") === true ? `RW cannot be routed: ${s.proxy.routes.rw}` : undefined)
      return { ok: why === undefined, body: probeBody(s, why === undefined ? {} : { reason: why }) }
    })

    // --- POST /users ----------------------------------------------------------------------
    const addUser = (query: URLSearchParams): Effect.Effect<Health> => {
      if (database === undefined) return Effect.succeed({ ok: false, body: { error: "this node has no database" } })
      const checked = checkNewUser({
        name: query.get("name"),
        host: query.get("host"),
        hash: query.get("hash"),
        grants: query.getAll("grant"),
        update: query.get("update") === "1",
        // The agent's own logins: the OS user its pool uses over the socket, an attached server's admin user.
        reserved: [userInfo().username, ...(config.mariadb?.user !== undefined ? [config.mariadb.user] : [])]
      })
      if (Result.isFailure(checked)) return Effect.succeed({ ok: false, body: { error: checked.failure.join("; ") } })
      const u = checked.success
      return database.writeAsMaster(userStatements(u)).pipe(
        Effect.flatMap((position) => Effect.map(cluster.current, (snapshot) => localPosition(position, snapshot.state.lastGtid?.domain ?? 0).gtid)),
        Effect.map((gtid): Health => ({ ok: true, body: { user: `'${u.name}'@'${u.host}'`, grants: u.grants.length, gtid: gtid === null ? null : formatGtid(gtid) } })),
        Effect.tap(() => Effect.logInfo(`user '${u.name}'@'${u.host}' ${u.update ? "created or updated" : "created"} through the log, with ${u.grants.length} grant(s)`)),
        Effect.catch((e) => Effect.succeed<Health>({
          ok: false,
          body: {
            error: e._tag === "DatabaseQueryFailed"
              ? `MariaDB refused: ${e.cause instanceof Error ? e.cause.message : String(e.cause)}${
                // ER_CANNOT_USER: CREATE USER of a user that exists.
                (e.cause as { readonly errno?: number }).errno === 1396 ? " (the user exists: --update sets its password and adds the grants)" : ""}`
              : e.message
          }
        }))
      )
    }

    const json = (body: unknown): View => ({ contentType: "application/json", body: JSON.stringify(body) })
    return {
      probes: {
        "/primary": primary,
        "/master": primary,
        "/read-write": primary,
        "/replica": replica,
        "/read-only": readOnly,
        "/health": health,
        "/ready": ready
      },
      views: {
        "/metrics": Effect.map(metricsBody, (body): View => ({ contentType: "text/plain; version=0.0.4; charset=utf-8", body })),
        "/cluster": Effect.map(clusterView, json),
        "/history": Effect.sync(() => json(historyBody()))
      },
      page: STATUS_PAGE_HTML,
      addUser
    }
  })
