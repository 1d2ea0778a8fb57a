#!/usr/bin/env node
/** The phxmaria command line. */
import { NodeRuntime, NodeServices } from "@effect/platform-node"
import { Cause, Console, Data, Effect, Exit, Option, Schedule } from "effect"
import { Command, Flag } from "effect/cli"
import { renderStatusTable } from "./domain/cluster/nodeStatus.js"
import { clusterHealth, logMembers, type MemberReport } from "./domain/cluster/health.js"
import { parseGtid } from "./domain/cluster/gtid.js"
import { joinHostPort } from "./domain/wire/address.js"
import { nativePasswordHashHex } from "./domain/mysql/accounts.js"
import * as Logging from "./services/logging.js"
import { VERSION } from "./layers/AdminViews.js"
import { readFileSync } from "node:fs"
import { adminTokenOf, type ConfigFileError, loadNodeConfig } from "./config/NodeConfig.js"
import * as NodeLayer from "./layers/NodeLayer.js"
import { killChildrenOnExit } from "./services/database/MariaDbProcess.js"
import {
  fetchStatus,
  requestAddMember,
  requestPromoteMember,
  requestRebuild,
  requestRemoveMember,
  requestReplaceMember,
  requestAddUser,
  requestSwitchover
} from "./client/StatusClient.js"
import type { NodeStatus } from "./domain/cluster/nodeStatus.js"
import { describeMembers } from "./domain/cluster/cluster.js"
import * as LocalCluster from "./testing/LocalCluster.js"
import * as Certificates from "./services/tls/Certificates.js"
import * as PeerTls from "./services/tls/PeerTls.js"
import mysql from "mysql2/promise"
import { userInfo } from "node:os"

class UsageError extends Data.TaggedError("UsageError")<{ readonly message: string }> {}

const configFlag = Flag.String("config").pipe(Flag.withDescription("path to the node's config file (JSON or YAML)"))

const readConfig = (path: string) =>
  loadNodeConfig(path).pipe(Effect.tapError((e) => Console.error(`phxmaria: invalid config ${e.path}: ${e.message}`)))

const bootstrapFlag = Flag.Boolean("bootstrap").pipe(
  Flag.withDefault(false),
  Flag.withDescription("this is the first start of a new cluster: the node may start with no Paxos state")
)

const joinFlag = Flag.Boolean("join").pipe(
  Flag.withDefault(false),
  Flag.withDescription("this node joins a running cluster (after `member add`): it may start with no Paxos state")
)

/** Logs: text or JSON lines on stderr (docs/operations.md, "Logs"); the default from $PHXMARIA_LOG_FORMAT, else text. */
const envLogFormat = (): Logging.LogFormat => (process.env.PHXMARIA_LOG_FORMAT === "json" ? "json" : "text")
const envLogLevel = (): Logging.LogLevelName => {
  const l = process.env.PHXMARIA_LOG_LEVEL
  return l === "debug" || l === "warn" || l === "error" ? l : "info"
}
const logFormatFlag = Flag.Literals("log-format", ["text", "json"]).pipe(
  Flag.withDescription("log lines on stderr as text or JSON (default: $PHXMARIA_LOG_FORMAT, else text)"),
  Flag.optional
)
const logLevelFlag = Flag.Literals("log-level", ["debug", "info", "warn", "error"]).pipe(
  Flag.withDescription("the least severe level logged (default: $PHXMARIA_LOG_LEVEL, else info)"),
  Flag.optional
)

const node = Command.make("node", { config: configFlag, bootstrap: bootstrapFlag, join: joinFlag, logFormat: logFormatFlag, logLevel: logLevelFlag }, ({ bootstrap, config, join, logFormat, logLevel }) =>
  Effect.gen(function*() {
    const read = yield* readConfig(config)
    const cfg = { ...read, ...(bootstrap ? { bootstrap: true } : {}), ...(join ? { join: true } : {}) }
    const logging = Logging.layer({ format: Option.getOrElse(logFormat, envLogFormat), level: Option.getOrElse(logLevel, envLogLevel), nodeId: cfg.nodeId })
    yield* Effect.gen(function*() {
      const running = yield* NodeLayer.RunningNode
      const { addresses } = running
      // One line on stdout that tools (tests, bench, demo) wait for.
      yield* Console.log(JSON.stringify({
        event: "ready",
        nodeId: cfg.nodeId,
        peerPort: addresses.peer.port,
        adminPort: addresses.admin.port,
        ...(cfg.mariadb === undefined ? {} : { rwPort: addresses.rw?.port, roPort: addresses.ro?.port })
      }))
      return yield* running.stopped
    }).pipe(
      Effect.provide(NodeLayer.layer(cfg)),
      // A node that cannot start (port taken, MariaDB failing to start, ...) or cannot go on says why.
      Effect.tapCause((cause) => Cause.hasInterruptsOnly(cause) ? Effect.void : Console.error(`phxmaria node ${cfg.nodeId}: cannot run: ${Cause.pretty(cause)}`)),
      Effect.provide(logging)
    )
  })).pipe(Command.withDescription("run one cluster node: its MariaDB, Paxos log, master lease, proxy ports and admin HTTP"))

/** The admin token flag (status sends it too: see admin.openStatus). */
const tokenFlag = Flag.String("token").pipe(
  Flag.withDescription("the cluster's admin token (default: from --config, else $PHXMARIA_ADMIN_TOKEN)"),
  Flag.optional
)

/** The exit code the process ends with when the command succeeds (status: 1 degraded, 2 no master), and when it fails. */
let successExitCode = 0
let failureExitCode = 1

/**
 * Every member's report: the ones `targets` name, and the members the answering nodes name
 * (the log's membership: a node added since the config was written) that they do not.
 */
const gatherReports = (targets: ReadonlyArray<{ readonly nodeId: number | null; readonly address: string }>, credentials: AdminCredentials) =>
  Effect.gen(function*() {
    const fetchAll = (ts: ReadonlyArray<{ readonly nodeId: number | null; readonly address: string }>) =>
      Effect.forEach(ts, (t) => Effect.map(fetchStatus({ address: t.address, tls: credentials.tls }, 2_000, credentials.token), (status) => ({ ...t, status })), { concurrency: "unbounded" })
    const first = yield* fetchAll(targets)
    const seen = new Set(first.map((r) => r.address))
    const answered = first.flatMap((r) => ("error" in r.status ? [] : [r.status]))
    const extra = [...new Map(answered.flatMap((s) => s.members).map((m) => [joinHostPort(m.host, m.adminPort), m.nodeId])).entries()]
      .filter(([address]) => !seen.has(address))
      .map(([address, nodeId]) => ({ nodeId, address }))
    const rows = [...first, ...(yield* fetchAll(extra))]
    // Node ids as the nodes say; for one that did not answer, as the others name its address.
    const named = new Map(answered.flatMap((s) => s.members).map((m) => [joinHostPort(m.host, m.adminPort), m.nodeId]))
    return rows.map((r) => ({
      nodeId: "error" in r.status ? r.nodeId ?? named.get(r.address) ?? null : r.status.nodeId,
      address: r.address,
      status: r.status
    })).sort((a, b) => (a.nodeId ?? Infinity) - (b.nodeId ?? Infinity))
  })

const status = Command.make(
  "status",
  {
    config: configFlag.pipe(Flag.optional),
    admin: Flag.String("admin").pipe(
      Flag.withDescription("comma-separated admin addresses host:port (instead of --config)"),
      Flag.optional
    ),
    token: tokenFlag,
    json: Flag.Boolean("json").pipe(Flag.withDefault(false), Flag.withDescription("print the reports and the cluster's health as JSON")),
    watch: Flag.Boolean("watch").pipe(Flag.withDefault(false), Flag.withDescription("refresh in place until Ctrl-C")),
    interval: Flag.Int("interval").pipe(Flag.withDefault(2), Flag.withDescription("seconds between refreshes with --watch"))
  },
  ({ admin, config, interval, json, token, watch }) =>
    Effect.gen(function*() {
      // Sent when known: a node with admin.openStatus false answers /status only with it.
      // 0, 1 and 2 say how the cluster is; 3 that it could not be told (a usage or config error, no token).
      failureExitCode = 3
      const credentials = yield* adminCredentialsFrom(token, config)
      const targets = Option.isSome(config)
        ? (yield* readConfig(config.value)).members.map((m) => ({ nodeId: m.nodeId as number | null, address: joinHostPort(m.host, m.adminPort) }))
        : Option.isSome(admin)
        ? admin.value.split(",").map((a) => a.trim()).filter((a) => a.length > 0).map((address) => ({ nodeId: null, address }))
        : yield* Effect.fail(new UsageError({ message: "status needs --config FILE or --admin host:port,..." }))
      if (interval < 1) return yield* new UsageError({ message: "--interval: at least 1 second" })
      const once = Effect.gen(function*() {
        const rows = yield* gatherReports(targets, credentials)
        const unauthorized = rows.find((r) => "error" in r.status && r.status.unauthorized === true)
        if (unauthorized !== undefined && "error" in unauthorized.status) return yield* new UsageError({ message: unauthorized.status.error })
        const reports = rows.map((r): MemberReport => ("error" in r.status ? { nodeId: r.nodeId, address: r.address, error: r.status.error } : { nodeId: r.nodeId, address: r.address, status: r.status }))
        // The cluster's health is that of the log's members: a node removed (still in a config file) is shown, not counted.
        const members = logMembers(reports)
        const health = clusterHealth(members === undefined ? reports : reports.filter((r) => r.nodeId !== null && members.has(r.nodeId)))
        const text = json
          ? JSON.stringify({ health, nodes: rows.map((r) => ("error" in r.status ? { nodeId: r.nodeId, address: r.address, error: r.status.error } : { nodeId: r.nodeId, address: r.address, status: r.status })) }, null, 2)
          : renderStatusTable(rows, health)
        return { text, health }
      })
      if (!watch) {
        const { health, text } = yield* once
        yield* Console.log(text)
        successExitCode = health.code
        return
      }
      // In place: home the cursor, draw, clear what the previous frame left below.
      yield* Effect.gen(function*() {
        const { text } = yield* once
        yield* Effect.sync(() => process.stdout.write(`\x1b[H\x1b[2J${new Date().toISOString()}  (every ${interval} s; Ctrl-C stops)\n\n${text}\n`))
      }).pipe(Effect.repeat(Schedule.spaced(`${interval} seconds`)))
    }).pipe(Effect.tapError((e) => e._tag === "UsageError" ? Console.error(`phxmaria: ${e.message}`) : Effect.void))
).pipe(Command.withDescription(
  "show every node's role, epoch, lease, log positions and lag, and the cluster's health (exit 0 healthy, 1 degraded, 2 no master)"
))

/** The admin address of the node `--config` is for (its own member entry), or `--admin`'s. */
const oneNodeAddress = (command: string, config: Option.Option<string>, admin: Option.Option<string>): Effect.Effect<string, UsageError | ConfigFileError> =>
  Option.isSome(config)
    ? Effect.map(readConfig(config.value), (c) => {
      const self = c.members.find((m) => m.nodeId === c.nodeId)!
      return joinHostPort(self.host, self.adminPort)
    })
    : Option.isSome(admin)
    ? Effect.succeed(admin.value.trim())
    : Effect.fail(new UsageError({ message: `${command} needs --config FILE or --admin host:port` }))

/**
 * GET `path` of one node until `accept` says yes of its answer, or `waitS` pass (0: once);
 * the last answer. A node that does not answer is a no (its error as the body).
 */
const probeNode = (address: string, path: string, waitS: number, accept: (status: number, body: string) => boolean) =>
  Effect.tryPromise({
    try: (signal) => fetch(`http://${address}${path}`, { signal }).then(async (r) => { const body = await r.text(); return { ok: accept(r.status, body), body } }),
    catch: (e) => e
  }).pipe(
    Effect.timeout("2 seconds"),
    Effect.catch((e) => Effect.succeed({ ok: false, body: e instanceof Error ? e.message : String(e) })),
    Effect.repeat({ schedule: Schedule.spaced("1 second"), until: (r) => r.ok || waitS === 0 }),
    Effect.timeoutOrElse({ duration: `${Math.max(waitS, 1)} seconds`, orElse: () => Effect.succeed({ ok: false, body: `no yes from ${path} within ${waitS} s` }) })
  )

const check = Command.make(
  "check",
  {
    config: configFlag.pipe(Flag.optional),
    admin: Flag.String("admin").pipe(Flag.withDescription("the node's admin address host:port (instead of --config)"), Flag.optional),
    probe: Flag.Literals("probe", ["config", "live", "health", "ready", "primary", "replica", "read-only"]).pipe(
      Flag.withDefault("health"),
      Flag.withDescription("config: the --config file is valid (nothing is asked); live: the agent answers; or one of its health endpoints (docs/operations.md)")
    ),
    wait: Flag.Int("wait").pipe(Flag.withDefault(0), Flag.withDescription("seconds to wait for it to pass (0: ask once)")),
    lag: Flag.Int("lag").pipe(Flag.withDescription("replica, read-only: at most this many transactions behind"), Flag.optional),
    lagSeconds: Flag.Int("lag-seconds").pipe(Flag.withDescription("replica, read-only: at most this many seconds behind"), Flag.optional)
  },
  ({ admin, config, lag, lagSeconds, probe, wait }) =>
    Effect.gen(function*() {
      if (probe === "config") {
        if (Option.isNone(config)) return yield* new UsageError({ message: "check --probe config needs --config FILE" })
        const c = yield* readConfig(config.value)
        yield* Console.log(`${config.value}: valid (cluster ${c.clusterId}, node ${c.nodeId}, ${c.members.length} members)`)
        return
      }
      const address = yield* oneNodeAddress("check", config, admin)
      const bounds = new URLSearchParams([
        ...(Option.isSome(lag) ? [["lag", String(lag.value)] as [string, string]] : []),
        ...(Option.isSome(lagSeconds) ? [["lagSeconds", String(lagSeconds.value)] as [string, string]] : [])
      ])
      // "live": the agent answers its health endpoint at all (200, or 503 with its JSON reason).
      const r = probe === "live"
        ? yield* probeNode(address, "/health", wait, (status, body) => (status === 200 || status === 503) && body.startsWith("{"))
        : yield* probeNode(address, `/${probe}${bounds.size > 0 ? `?${bounds}` : ""}`, wait, (status) => status === 200)
      yield* (r.ok ? Console.log : Console.error)(`${address} ${probe}: ${r.ok ? "yes" : "no"} ${r.body}`)
      successExitCode = r.ok ? 0 : 1
    }).pipe(Effect.tapError((e) => e._tag === "UsageError" ? Console.error(`phxmaria: ${e.message}`) : Effect.void))
).pipe(Command.withDescription("ask one node a health question (exit 0 yes, 1 no); --wait N waits for it (systemd's ready check)"))

/** What a call that changes something is sent with: the admin token, and with peer TLS the node's certificate (HTTPS). */
interface AdminCredentials {
  readonly token?: string | undefined
  readonly tls?: PeerTls.PeerTls | undefined
}

/**
 * The admin token: --token, else the config file's (admin.token / admin.tokenFile), else
 * $PHXMARIA_ADMIN_TOKEN; with --config and its `tls`, calls go over HTTPS with that node's certificate.
 */
const adminCredentialsFrom = (token: Option.Option<string>, config: Option.Option<string>): Effect.Effect<AdminCredentials, ConfigFileError | PeerTls.PeerTlsError> =>
  Effect.gen(function*() {
    const c = Option.isSome(config) ? yield* readConfig(config.value) : undefined
    return {
      token: Option.isSome(token) ? token.value : (c !== undefined ? adminTokenOf(c) : undefined) ?? process.env.PHXMARIA_ADMIN_TOKEN,
      tls: c === undefined ? undefined : yield* PeerTls.loadOptional(c.tls, c.nodeId)
    }
  })

const rebuild = Command.make(
  "rebuild",
  {
    config: configFlag.pipe(Flag.optional),
    admin: Flag.String("admin").pipe(Flag.withDescription("the node's admin address host:port (instead of --config)"), Flag.optional),
    token: tokenFlag
  },
  ({ admin, config, token }) =>
    Effect.gen(function*() {
      const address = yield* oneNodeAddress("rebuild", config, admin)
      yield* Console.log(yield* requestRebuild({ address, ...(yield* adminCredentialsFrom(token, config)) }))
    }).pipe(Effect.tapError((e) =>
      e._tag === "UsageError" ? Console.error(`phxmaria: ${e.message}`)
      : e._tag === "RebuildRefused" ? Console.error(`phxmaria: ${e.address} did not take the rebuild: ${e.message}`)
      : Effect.void
    ))
).pipe(Command.withDescription(
  "rebuild one node's database from a copy of a healthy peer (a replica or a diverged node; run on its machine)"
))

/** The admin addresses `--config` (its members) or `--admin` (a list) name. */
const adminTargets = (command: string, config: Option.Option<string>, admin: Option.Option<string>): Effect.Effect<ReadonlyArray<string>, UsageError | ConfigFileError> =>
  Option.isSome(config)
    ? Effect.map(readConfig(config.value), (c) => c.members.map((m) => joinHostPort(m.host, m.adminPort)))
    : Option.isSome(admin)
    ? Effect.succeed(admin.value.split(",").map((a) => a.trim()).filter((a) => a.length > 0))
    : Effect.fail(new UsageError({ message: `${command} needs --config FILE or --admin host:port,...` }))

/** The serving master's status and admin address, from the nodes `targets` name. */
const findMaster = (targets: ReadonlyArray<string>, credentials: AdminCredentials) =>
  Effect.gen(function*() {
    const answers = yield* Effect.forEach(targets, (a) => fetchStatus({ address: a, tls: credentials.tls }, 2_000, credentials.token), { concurrency: "unbounded" })
    const up = answers.flatMap((s) => ("error" in s ? [] : [s]))
    if (up.length === 0) return yield* new UsageError({ message: `no node answers (${targets.join(", ")})` })
    const listed = up.find((s) => s.role === "master")
    if (listed !== undefined) {
      const address = adminAddressOf(listed, listed.nodeId) ?? targets[answers.indexOf(listed)]!
      return { status: listed, address, admin: { address, ...credentials } }
    }
    // The master may be a member not listed (added since): the nodes say who it is and where.
    for (const s of up) {
      const address = s.master === null ? undefined : adminAddressOf(s, s.master)
      if (address === undefined) continue
      const m = yield* fetchStatus({ address, tls: credentials.tls }, 2_000, credentials.token)
      if (!("error" in m) && m.role === "master") return { status: m, address, admin: { address, ...credentials } }
    }
    return yield* new UsageError({ message: "no node serves as master now (an election may be under way): try again" })
  })

const adminAddressOf = (status: NodeStatus, nodeId: number): string | undefined => {
  const m = status.members.find((x) => x.nodeId === nodeId)
  return m === undefined ? undefined : joinHostPort(m.host, m.adminPort)
}

/** The serving master, moved off node `id` first (a switchover to a caught-up replica) if it is that node. */
const masterOtherThan = (targets: ReadonlyArray<string>, credentials: AdminCredentials, id: number) =>
  Effect.gen(function*() {
    const master = yield* findMaster(targets, credentials)
    if (master.status.nodeId !== id) return master
    yield* Console.log(`node ${id} is the master: handing over to a caught-up replica first ...`)
    const done = yield* requestSwitchover(master.admin, undefined)
    yield* Console.log(`node ${done.master} is master (epoch ${done.epoch})`)
    const address = adminAddressOf(master.status, done.master)
    if (address === undefined) return yield* new UsageError({ message: `node ${done.master} has no known admin address` })
    return yield* findMaster([address, ...targets], credentials)
  })

/** Removes node `id` through the master (a master `id` hands over first). */
const removeMember = (targets: ReadonlyArray<string>, credentials: AdminCredentials, id: number) =>
  Effect.gen(function*() {
    const master = yield* masterOtherThan(targets, credentials, id)
    yield* Console.log(`removing node ${id} (asking the master at ${master.address}) ...`)
    const done = yield* requestRemoveMember(master.admin, id)
    yield* Console.log(
      `done: node ${id} is no longer a member; members ${describeMembers(done.members)}, from log instance ${done.from}`
    )
  })

/** Prints a joining node's progress (copy, replay, lag) when it changes. */
const progressOf = (address: string, id: number, token: string | undefined) => {
  let lastLine = ""
  return Effect.gen(function*() {
    const s = yield* fetchStatus(address, 2_000, token)
    const line = "error" in s
      ? `node ${id}: not answering (${s.error})`
      : s.database?.rebuild != null
      ? `node ${id}: rebuilding, ${s.database.rebuild.phase ?? "replay"} ${s.database.rebuild.percent}%` +
        (s.database.rebuild.etaS !== undefined ? `, about ${s.database.rebuild.etaS} s left` : "")
      : `node ${id}: ${s.database?.role ?? "log"}, applied instance ${s.appliedInstance}${s.database?.lag != null ? `, ${s.database.lag} transactions behind` : ""}`
    if (line !== lastLine) yield* Console.log(line)
    lastLine = line
  })
}

/** How long `member add` waits for the new node to catch up before it gives up. */
const ADD_CATCH_UP_MS = 30 * 60_000

/** Adds a node through the master: a learner, then (once it has caught up) a voter; progress is printed. */
const addMember = (targets: ReadonlyArray<string>, credentials: AdminCredentials, fields: Readonly<Record<string, number | string>>) =>
  Effect.gen(function*() {
    const id = Number(fields.id)
    const master = yield* findMaster(targets, credentials)
    yield* Console.log(`adding node ${id} (${fields.host}:${fields.port}) as a learner (asking the master, node ${master.status.nodeId}) ...`)
    yield* requestAddMember(master.admin, fields)
    yield* Console.log(`node ${id} is a learner; waiting for it to catch up (start its agent with --join if it is not running) ...`)
    const progress = progressOf(joinHostPort(String(fields.host), Number(fields.adminPort)), id, credentials.token)
    const caughtUp = Effect.gen(function*() {
      yield* progress
      const promoted = yield* Effect.result(requestPromoteMember(master.admin, id))
      return promoted._tag === "Success"
    })
    yield* caughtUp.pipe(
      Effect.repeat({ schedule: Schedule.spaced("1 second"), until: (done) => done }),
      Effect.timeoutOrElse({
        duration: `${ADD_CATCH_UP_MS} millis`,
        orElse: () => Effect.fail(new UsageError({ message: `node ${id} did not catch up within ${ADD_CATCH_UP_MS / 60_000} min: it stays a learner` }))
      })
    )
    yield* Console.log(`done: node ${id} is a voter`)
  })

const reportMemberError = (e: { readonly _tag: string; readonly message: string; readonly address?: string }) =>
  e._tag === "UsageError" ? Console.error(`phxmaria: ${e.message}`)
  : e._tag === "SwitchoverFailed" ? Console.error(`phxmaria: switchover refused by ${e.address}: ${e.message}`)
  : e._tag === "MembershipFailed" ? Console.error(`phxmaria: ${e.address} refused: ${e.message}`)
  : Effect.void

const targetFlags = {
  config: configFlag.pipe(Flag.optional),
  admin: Flag.String("admin").pipe(Flag.withDescription("comma-separated admin addresses host:port of members (instead of --config)"), Flag.optional),
  token: tokenFlag
}
/** The new node's address flags (`member add`, `member replace`). */
const newNodeFlags = {
  host: Flag.String("host").pipe(Flag.withDescription("the new node's address")),
  port: Flag.Int("port").pipe(Flag.withDescription("its peer (Paxos) port")),
  adminPort: Flag.Int("admin-port").pipe(Flag.withDescription("its admin HTTP port")),
  rwPort: Flag.Int("rw-port").pipe(Flag.optional),
  roPort: Flag.Int("ro-port").pipe(Flag.optional),
  forwardRwPort: Flag.Int("forward-rw-port").pipe(Flag.optional),
  forwardRoPort: Flag.Int("forward-ro-port").pipe(Flag.optional)
}
type NewNode = { readonly host: string; readonly port: number; readonly adminPort: number } & Record<
  "rwPort" | "roPort" | "forwardRwPort" | "forwardRoPort",
  Option.Option<number>
>
const newNodeFields = (id: number, a: NewNode): Record<string, number | string> => {
  const fields: Record<string, number | string> = { id, host: a.host, port: a.port, adminPort: a.adminPort }
  for (const k of ["rwPort", "roPort", "forwardRwPort", "forwardRoPort"] as const) if (Option.isSome(a[k])) fields[k] = a[k].value
  return fields
}

const memberRemove = Command.make(
  "remove",
  { ...targetFlags, id: Flag.Int("id").pipe(Flag.withDescription("the node to remove")) },
  ({ admin, config, id, token }) =>
    Effect.gen(function*() {
      yield* removeMember(yield* adminTargets("member remove", config, admin), yield* adminCredentialsFrom(token, config), id)
    }).pipe(Effect.tapError(reportMemberError))
).pipe(Command.withDescription("remove a node from the cluster (the master hands over first); it can no longer vote or route"))

const memberAdd = Command.make(
  "add",
  { ...targetFlags, id: Flag.Int("id").pipe(Flag.withDescription("the new node's id")), ...newNodeFlags },
  (a) =>
    Effect.gen(function*() {
      yield* addMember(yield* adminTargets("member add", a.config, a.admin), yield* adminCredentialsFrom(a.token, a.config), newNodeFields(a.id, a))
    }).pipe(Effect.tapError(reportMemberError))
).pipe(Command.withDescription("add a node: a learner first (it copies a replica's database and catches up), then a voter"))

const memberReplace = Command.make(
  "replace",
  {
    ...targetFlags,
    id: Flag.Int("id").pipe(Flag.withDescription("the node to replace")),
    newId: Flag.Int("new-id").pipe(Flag.withDescription("the new node's id")),
    ...newNodeFlags
  },
  (a) =>
    Effect.gen(function*() {
      const targets = yield* adminTargets("member replace", a.config, a.admin)
      const credentials = yield* adminCredentialsFrom(a.token, a.config)
      const master = yield* masterOtherThan(targets, credentials, a.id)
      // The master adds the new node, makes it a voter once caught up, then removes the old
      // one (POST /members/replace): the voters never drop below the set's majority.
      yield* Console.log(`replacing node ${a.id} by node ${a.newId} (asking the master, node ${master.status.nodeId}); start node ${a.newId} with --join ...`)
      const progress = progressOf(joinHostPort(a.host, a.adminPort), a.newId, credentials.token)
      const done = yield* requestReplaceMember(master.admin, a.id, newNodeFields(a.newId, a)).pipe(
        Effect.raceFirst(Effect.andThen(progress.pipe(Effect.repeat(Schedule.spaced("1 second"))), Effect.never))
      )
      yield* Console.log(`done: node ${a.newId} is a voter`)
      yield* Console.log(
        `done: node ${a.id} is no longer a member; members ${describeMembers(done.members)}, from log instance ${done.from}`
      )
    }).pipe(Effect.tapError(reportMemberError))
).pipe(Command.withDescription("replace a node by a new one: the new one is added (and caught up) first, then the old one removed"))

const userAdd = Command.make(
  "add",
  {
    ...targetFlags,
    name: Flag.String("name").pipe(Flag.withDescription("the user's name")),
    host: Flag.String("host").pipe(Flag.withDefault("%"), Flag.withDescription("where it may log in from: a host, an address, a pattern with % (default %)")),
    passwordFile: Flag.String("password-file").pipe(Flag.withDescription("a file holding its password (the first line); it never leaves this machine, only its hash")),
    grant: Flag.String("grant").pipe(Flag.atLeast(0), Flag.withDescription(`privileges, repeatable: "SELECT, INSERT ON shop.*"`)),
    update: Flag.Boolean("update").pipe(Flag.withDefault(false), Flag.withDescription("the user may exist: set its password and add the grants"))
  },
  (a) =>
    Effect.gen(function*() {
      const targets = yield* adminTargets("user add", a.config, a.admin)
      const credentials = yield* adminCredentialsFrom(a.token, a.config)
      const password = yield* Effect.try({
        try: () => readFileSync(a.passwordFile, "utf8").split("\n")[0]!.replace(/\r$/, ""),
        catch: (e) => new UsageError({ message: `--password-file: ${e instanceof Error ? e.message : String(e)}` })
      })
      if (password.length === 0) return yield* new UsageError({ message: `--password-file ${a.passwordFile}: the first line is empty` })
      const master = yield* findMaster(targets, credentials)
      yield* Console.log(`creating '${a.name}'@'${a.host}' through the master (node ${master.status.nodeId}) ...`)
      const done = yield* requestAddUser(master.admin, { name: a.name, host: a.host, hash: nativePasswordHashHex(password), grants: a.grant, update: a.update })
      // Every node has it once its database applied the transaction.
      const seq = (done.gtid === null ? undefined : parseGtid(done.gtid)?.seq) ?? 0
      const reached = (s: NodeStatus) => (s.database?.localGtid == null ? 0 : parseGtid(s.database.localGtid)?.seq ?? 0) >= seq
      const members = master.status.members.map((m) => ({ nodeId: m.nodeId, address: joinHostPort(m.host, m.adminPort) }))
      const missing = yield* Effect.forEach(members, (m) => fetchStatus({ address: m.address, tls: credentials.tls }, 2_000, credentials.token)).pipe(
        Effect.map((ss) => members.filter((_, i) => { const s = ss[i]!; return "error" in s || !reached(s) }).map((m) => m.nodeId)),
        Effect.repeat({ schedule: Schedule.spaced("200 millis"), until: (left) => left.length === 0 }),
        Effect.timeoutOrElse({ duration: "30 seconds", orElse: () => Effect.succeed<ReadonlyArray<number>>([-1]) })
      )
      yield* Console.log(missing.length === 0
        ? `done: ${done.user} with ${done.grants} grant(s), on every node (GTID ${done.gtid})`
        : `done: ${done.user} with ${done.grants} grant(s) is in the log (GTID ${done.gtid}); not every node has applied it yet (see status)`)
    }).pipe(Effect.tapError((e) =>
      e._tag === "UsageError" ? Console.error(`phxmaria: ${e.message}`)
      : e._tag === "UserAddFailed" ? Console.error(`phxmaria: ${e.address} refused: ${e.message}`)
      : Effect.void
    ))
).pipe(Command.withDescription("create an application user through the log (every node gets it), e.g. --name app --password-file F --grant \"ALL ON shop.*\""))

const user = Command.make("user").pipe(
  Command.withDescription("application users (made through the log, so every node has them)"),
  Command.withSubcommands([userAdd])
)

const member = Command.make("member").pipe(
  Command.withDescription("change the cluster's members through the log"),
  Command.withSubcommands([memberAdd, memberRemove, memberReplace])
)

const switchover = Command.make(
  "switchover",
  {
    config: configFlag.pipe(Flag.optional),
    admin: Flag.String("admin").pipe(Flag.withDescription("comma-separated admin addresses host:port of members (instead of --config)"), Flag.optional),
    to: Flag.Int("to").pipe(Flag.withDescription("the node to make master (default: a replica that has caught up)"), Flag.optional),
    token: tokenFlag
  },
  ({ admin, config, to, token }) =>
    Effect.gen(function*() {
      const targets = yield* adminTargets("switchover", config, admin)
      const credentials = yield* adminCredentialsFrom(token, config)
      const answers = yield* Effect.forEach(targets, (a) => fetchStatus({ address: a, tls: credentials.tls }, 2_000, credentials.token), { concurrency: "unbounded" })
      const up = answers.flatMap((s) => ("error" in s ? [] : [s]))
      if (up.length === 0) return yield* new UsageError({ message: `no node answers (${targets.join(", ")})` })
      const serving = up.find((s) => s.role === "master")
      if (serving === undefined) return yield* new UsageError({ message: "no node serves as master now (an election may be under way): try again" })
      const self = serving.members.find((m) => m.nodeId === serving.nodeId)
      const address = self === undefined ? targets[answers.indexOf(serving)]! : joinHostPort(self.host, self.adminPort)
      const target = Option.getOrUndefined(to)
      yield* Console.log(`node ${serving.nodeId} is master (epoch ${serving.epoch}); asking it to hand over to ${target === undefined ? "a caught-up replica" : `node ${target}`} ...`)
      const done = yield* requestSwitchover({ address, ...credentials }, target)
      yield* Console.log(`done: node ${done.master} is master (epoch ${done.epoch}), ${done.handoverMs} ms after RW closed on node ${done.from}`)
    }).pipe(Effect.tapError((e) =>
      e._tag === "UsageError" ? Console.error(`phxmaria: ${e.message}`)
      : e._tag === "SwitchoverFailed" ? Console.error(`phxmaria: switchover refused by ${e.address}: ${e.message}`)
      : Effect.void
    ))
).pipe(Command.withDescription("move the master to a caught-up replica (--to N: that one), losing no acknowledged write"))

const DEMO_USER = "demo"
const DEMO_PASSWORD = "demo"

/**
 * The demo's login, created by a real write on the master (it replicates through the log).
 * No SUPER or READ ONLY ADMIN: read_only then also holds for it on the RO port.
 */
const createDemoUser = (socket: string) =>
  Effect.tryPromise({
    try: async () => {
      const conn = await mysql.createConnection({ socketPath: socket, user: process.getuid?.() === 0 ? "root" : userInfo().username })
      try {
        await conn.query("CREATE USER IF NOT EXISTS ?@'%' IDENTIFIED BY ?", [DEMO_USER, DEMO_PASSWORD])
        await conn.query(
          "GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX, ALTER, CREATE TEMPORARY TABLES, LOCK TABLES, " +
            "EXECUTE, CREATE VIEW, SHOW VIEW, CREATE ROUTINE, ALTER ROUTINE, TRIGGER ON *.* TO ?@'%'",
          [DEMO_USER]
        )
      } finally {
        conn.destroy()
      }
    },
    catch: (e) => new UsageError({ message: `cannot create the demo user: ${e instanceof Error ? e.message : String(e)}` })
  })

const demo = Command.make(
  "demo",
  {
    nodes: Flag.Int("nodes").pipe(Flag.withDescription("how many nodes (1, 3, 5 or 7)"), Flag.withDefault(3)),
    dir: Flag.String("dir").pipe(Flag.withDescription("work directory to keep (default: a temp dir removed at exit)"), Flag.optional)
  },
  ({ dir, nodes }) =>
    Effect.gen(function*() {
      if (![1, 3, 5, 7].includes(nodes)) return yield* new UsageError({ message: "--nodes must be 1 (a development node), 3, 5 or 7" })
      yield* Console.log(`starting ${nodes} nodes (each: mariadbd + agent) on 127.0.0.1 ...`)
      const cluster = yield* LocalCluster.make({
        nodes,
        clusterId: "demo",
        database: true,
        tls: true,
        clientTls: true,
        ...(Option.isSome(dir) ? { dir: dir.value } : {})
      })
      const statusOf = (n: LocalCluster.LocalNode) => fetchStatus(`127.0.0.1:${n.adminPort}`, 1_000)
      let master: LocalCluster.LocalNode | undefined
      yield* LocalCluster.waitFor("a master", Effect.map(
        Effect.forEach(cluster.nodes, statusOf),
        (ss) => (master = cluster.nodes.find((_, i) => { const s = ss[i]!; return !("error" in s) && s.database?.role === "master" })) !== undefined
      ), 60_000)
      yield* createDemoUser(master!.mariadb!.socket)
      const lines = [
        "",
        `cluster "demo" is up in ${cluster.dir}; master: node ${master!.nodeId}`,
        "",
        ...cluster.nodes.flatMap((n) => [
          `node ${n.nodeId}: RW port ${n.rwPort} (read-write, linearizable), RO port ${n.roPort} (read-only), admin http://127.0.0.1:${n.adminPort}/status`,
          `  mariadb -h127.0.0.1 -P${n.rwPort} -u${DEMO_USER} -p${DEMO_PASSWORD} --ssl-ca=${cluster.dir}/tls/ca.crt --ssl-verify-server-cert`
        ]),
        "",
        `peers speak mutual TLS with the cluster's own CA (${cluster.dir}/tls); clients may use TLS (verified against its ca.crt)`,
        `status:  node dist/main.js status --admin ${cluster.nodes.map((n) => `127.0.0.1:${n.adminPort}`).join(",")}`,
        `changes (switchover, member, rebuild) need the admin token: --config ${cluster.nodes[0]!.configPath} (or --token ${cluster.adminToken})`,
        "Ctrl-C stops every process."
      ]
      yield* Console.log(lines.join("\n"))
      return yield* Effect.never
    }).pipe(
      Effect.scoped,
      Effect.tapError((e) => Console.error(`phxmaria demo: ${e.message}`))
    )
).pipe(Command.withDescription("start a local cluster (3 MariaDB servers and their agents) and print how to connect"))

const certs = Command.make(
  "certs",
  {
    out: Flag.String("out").pipe(Flag.withDescription("directory for ca.crt, ca.key and node-N.crt/.key (created 0700; an existing CA in it is reused)")),
    nodes: Flag.String("nodes").pipe(Flag.withDescription("node ids to issue certificates for, e.g. 1,2,3")),
    hosts: Flag.String("hosts").pipe(Flag.withDescription("each node's address, in the order of --nodes (IP or DNS names in the certificate, for MySQL clients that verify the server)"), Flag.optional),
    cluster: Flag.String("cluster").pipe(Flag.withDescription("the cluster id, written into the CA's name"), Flag.withDefault("phxmaria"))
  },
  ({ cluster, hosts, nodes, out }) =>
    Effect.gen(function*() {
      const ids = nodes.split(",").map((x) => x.trim())
      if (ids.some((x) => !/^[1-9][0-9]{0,5}$/.test(x))) return yield* new UsageError({ message: `--nodes: not a list of node ids: ${nodes}` })
      const addresses = Option.isSome(hosts) ? hosts.value.split(",").map((h) => h.trim()) : []
      if (addresses.length > 0 && addresses.length !== ids.length) return yield* new UsageError({ message: "--hosts needs one address per node in --nodes" })
      const issued = yield* Certificates.issue({
        dir: out,
        clusterId: cluster,
        nodes: ids.map(Number),
        hosts: new Map(addresses.map((h, i) => [Number(ids[i]), [h]])),
        server: true
      })
      yield* Console.log([
        `CA: ${issued.ca} (keep ${issued.ca.replace(/\.crt$/, ".key")} offline or at least private: it issues members)`,
        ...issued.nodes.map((n) => `node ${n.nodeId}: ${n.cert}, ${n.key}`),
        `clients' certificate (every node, every address given): ${issued.server!.cert}, ${issued.server!.key}`,
        `in node N's config: "tls": { "ca": "${issued.ca}", "cert": ".../node-N.crt", "key": ".../node-N.key" }`,
        `  and for clients over TLS: "mariadb": { ..., "ssl": { "cert": "${issued.server!.cert}", "key": "${issued.server!.key}" } }`,
        `clients verify with: mariadb --ssl-ca=${issued.ca} --ssl-verify-server-cert ...`
      ].join("\n"))
    }).pipe(Effect.tapError((e) => Console.error(`phxmaria certs: ${e.message}`)))
).pipe(Command.withDescription("create the cluster's CA and a certificate for each node (mutual TLS between agents)"))

const app = Command.make("phxmaria").pipe(
  Command.withDescription("a MySQL-compatible, Paxos-replicated cluster on stock MariaDB"),
  Command.withSubcommands([node, status, check, user, switchover, member, rebuild, certs, demo])
)

// The CLI owns the process: a mariadbd it started does not outlive it, even on an exit
// that skips finalizers (an uncaught defect). A library embedding does not get this hook.
killChildrenOnExit()

Command.run(app, { version: VERSION }).pipe(
  Effect.provide(NodeServices.layer),
  // Commands other than `node` log little; the same format, on stderr.
  Effect.provide(Logging.layer({ format: envLogFormat(), level: envLogLevel() })),
  // Errors were already reported in plain words where they arose.
  (program) =>
    NodeRuntime.runMain(program, {
      disableErrorReporting: true,
      // A stop requested with SIGINT/SIGTERM is a clean exit (0), not a failure (130).
      teardown: (exit, onExit) => onExit(Exit.isSuccess(exit) ? successExitCode : Cause.hasInterruptsOnly(exit.cause) ? 0 : failureExitCode)
    })
)

