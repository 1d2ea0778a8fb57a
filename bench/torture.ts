/**
 * The fault suite (Jepsen-style): `npm run torture -- --workload W --fault F --runs N
 * --seconds S [--nodes 5] [--clients C] [--seed X]`. Each run starts a cluster on this
 * machine, drives concurrent clients through the RW ports of all nodes, injects faults on a
 * schedule, heals, waits for recovery without operator action, then checks the recorded
 * history. Prints a line per run and a final JSON line
 * {"bench":"torture","workload":W,"fault":F,"runs":N,"failedRuns":N,"lostAckedWrites":N,
 *  "anomalies":N,"recoveredRuns":N,"maxRecoveryMs":N}; exits 1 on any anomaly or failed
 * run. A failing run keeps its directory (history.json, faults, node logs) and names it.
 */
import { NodeRuntime } from "@effect/platform-node"
import { Data, Effect, Exit } from "effect"
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import mysql from "mysql2/promise"
import type { Op } from "../src/domain/checkers/history.js"
import * as LocalCluster from "../src/testing/LocalCluster.js"
import { adminQuery, servingMaster, statuses } from "../test/support/dbCluster.js"
import { type Fault, FAULTS, inject, type Injected, iptablesUsable, type Members, removeRules } from "./torture/faults.js"
import { now, PASSWORD, USER, type WorkloadName, WORKLOADS, workloads } from "./torture/workloads.js"

class TortureError extends Data.TaggedError("TortureError")<{ readonly message: string }> {}

const arg = (name: string, fallback: string) => {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1]! : fallback
}

const options = {
  workload: arg("workload", "bank") as WorkloadName,
  fault: arg("fault", "kill") as Fault,
  runs: Number(arg("runs", "1")),
  seconds: Number(arg("seconds", "20")),
  nodes: Number(arg("nodes", "3")),
  clientsPerNode: Number(arg("clients", "2")),
  seed: Number(arg("seed", String(Date.now() % 1_000_000)))
}

/** mulberry32: the run's faults and operations replay from its seed. */
const prng = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

/** Every node up, one master serving, every replica caught up. */
const recovered = (c: LocalCluster.LocalCluster) =>
  Effect.map(statuses(c), (ss) =>
    ss.every((s) => !("error" in s) && (s.database?.role === "master" || (s.database?.role === "replica" && s.database.lag === 0))) &&
    ss.filter((s) => !("error" in s) && s.database?.role === "master").length === 1)

/** The tables each workload writes (compared across nodes after recovery). */
const TABLES: Record<WorkloadName, string> = { bank: "torture.accounts", append: "torture.lists", register: "torture.register" }

interface RunResult {
  readonly ok: boolean
  readonly ops: number
  readonly okOps: number
  readonly infoOps: number
  readonly lostAckedWrites: number
  readonly anomalies: ReadonlyArray<string>
  readonly recoveryMs: number | undefined
  readonly dir: string
  readonly error?: string
}

const runOnce = (index: number) =>
  Effect.gen(function*() {
    const seed = options.seed + index
    const random = prng(seed)
    const workload = workloads[options.workload]
    const dir = mkdtempSync(join(tmpdir(), `phxmaria-torture-${options.workload}-${options.fault}-`))
    // A mariadbd run as `mysql` (the agents are root) must pass through.
    chmodSync(dir, 0o711)
    const history: Array<Op<unknown, unknown>> = []
    const faults: Array<{ atMs: number; what: string }> = []
    const t0 = now()
    const result = yield* Effect.scoped(Effect.gen(function*() {
      const cluster = yield* LocalCluster.make({
        nodes: options.nodes,
        database: true,
        dir,
        host: options.fault === "partition" || options.fault === "mixed" ? "per-node" : "127.0.0.1"
      })
      // The members now: a membership fault adds and removes nodes; the checks look at these.
      const members: Members = { nodes: [...cluster.nodes], nextId: cluster.nodes.length + 1 }
      const current = (): LocalCluster.LocalCluster => ({ ...cluster, nodes: members.nodes })
      let master: LocalCluster.LocalNode | undefined
      yield* LocalCluster.waitFor("a first master", Effect.map(servingMaster(cluster), (m) => (master = m) !== undefined), 60_000)
      yield* adminQuery(master!, `CREATE USER IF NOT EXISTS '${USER}'@'%' IDENTIFIED BY '${PASSWORD}'`)
      yield* adminQuery(master!, `GRANT ALL ON torture.* TO '${USER}'@'%'`)
      for (const sql of workload.setup) yield* adminQuery(master!, sql)

      // Clients: a few per node, each through that node's RW port; reconnect after errors.
      const deadline = now() + options.seconds * 1_000
      const maxOps = options.workload === "register" ? 250 : Infinity
      const registerPauseMs = Math.max(10, Math.floor((options.seconds * 1_000 * options.nodes * options.clientsPerNode) / 250))
      const client = async (node: LocalCluster.LocalNode, id: number) => {
        let process = id * 1_000
        const rnd = prng(seed * 31 + id)
        while (now() < deadline && history.length < maxOps) {
          let conn: mysql.Connection | undefined
          try {
            conn = await mysql.createConnection({
              host: node.host, port: node.rwPort!, user: USER, password: PASSWORD, connectTimeout: 3_000
            })
            while (now() < deadline && history.length < maxOps) {
              await workload.run(conn, rnd, history, process)
              // The register history stays short (the linearizability search is exponential),
              // spread over the whole run so that it spans the faults.
              if (options.workload === "register") await new Promise((r) => setTimeout(r, registerPauseMs))
            }
          } catch {
            // After an indeterminate op a new process id, as Jepsen does.
            process++
            await new Promise((r) => setTimeout(r, 50))
          } finally {
            conn?.destroy()
          }
        }
      }
      const clients = Promise.all(cluster.nodes.flatMap((n, i) =>
        Array.from({ length: options.clientsPerNode }, (_, j) => client(n, i * options.clientsPerNode + j + 1))))

      // Faults: one every 2-4 s, held 1-4 s, from 1 s in until 3 s before the end.
      let healed = now()
      if (options.fault !== "none") {
        yield* Effect.sleep("1 second")
        while (now() < deadline - 3_000) {
          const m = yield* servingMaster(current())
          const injected: Injected = yield* inject(options.fault, cluster, m, random, members)
          faults.push({ atMs: Math.round(now() - t0), what: injected.description })
          if (process.env.TORTURE_VERBOSE === "1") process.stderr.write(`  ${Math.round(now() - t0)} ms: ${injected.description}\n`)
          yield* Effect.sleep(`${1_000 + Math.floor(random() * 3_000)} millis`)
          yield* injected.heal
          faults.push({ atMs: Math.round(now() - t0), what: `healed: ${injected.description}` })
          healed = now()
          yield* Effect.sleep(`${1_000 + Math.floor(random() * 2_000)} millis`)
        }
      }
      yield* Effect.promise(() => clients)
      // Everything back: agents running, nothing stopped, no rules.
      removeRules()
      for (const n of members.nodes) if (n.pid() === undefined) yield* n.start
      const recoveredAt = yield* LocalCluster.waitFor("recovery", recovered(current()), 120_000).pipe(
        Effect.as(now()),
        Effect.catch(() => Effect.succeed(undefined))
      )
      const recoveryMs = recoveredAt === undefined ? undefined : Math.max(0, Math.round(recoveredAt - healed))
      if (recoveredAt === undefined) {
        return { ok: false, anomalies: [], lostAckedWrites: 0, recoveryMs, error: "the cluster did not recover within 120 s", cluster }
      }
      // Every node holds the same data as the master (a wiped node too), within a bound: a
      // replica reports lag 0 from its last check, a moment before its last commit shows.
      const sums = Effect.forEach(members.nodes, (n) =>
        Effect.map(adminQuery<{ Table: string; Checksum: unknown }>(n, "CHECKSUM TABLE " + TABLES[options.workload]), (rows) =>
          rows.map((r) => String(r.Checksum)).join(",")))
      const same = yield* LocalCluster.waitFor("every node to hold the same tables", Effect.map(sums, (xs) => new Set(xs).size === 1), 30_000).pipe(
        Effect.as(true),
        Effect.catch(() => Effect.succeed(false))
      )
      if (!same) {
        return { ok: false, anomalies: ["the nodes' tables differ after recovery"], lostAckedWrites: 0, recoveryMs, error: undefined, cluster }
      }
      const m = (yield* servingMaster(current()))!
      const check = yield* Effect.tryPromise({
        try: async () => {
          const conn = await mysql.createConnection({ host: m.host, port: m.rwPort!, user: USER, password: PASSWORD })
          try {
            return await workload.check(conn, history)
          } finally {
            conn.destroy()
          }
        },
        catch: (e) => new TortureError({ message: `final read failed: ${e instanceof Error ? e.message : String(e)}` })
      })
      return { ok: check.valid, anomalies: check.anomalies, lostAckedWrites: check.lostAckedWrites, recoveryMs, error: undefined, cluster }
    }).pipe(
      Effect.tap((r) => r.ok ? Effect.void : Effect.sync(() => {
        // Keep what explains the failure: history, faults, every node's output.
        writeFileSync(join(dir, "history.json"), JSON.stringify({ seed, options, faults, history }, null, 1))
        for (const n of r.cluster.nodes) writeFileSync(join(dir, `node${n.nodeId}.log`), n.output())
      })),
      Effect.ensuring(Effect.sync(removeRules))
    )).pipe(
      Effect.exit
    )
    const ops = history.length
    const okOps = history.filter((o) => o.status === "ok").length
    const infoOps = history.filter((o) => o.status === "info").length
    if (Exit.isFailure(result)) {
      writeFileSync(join(dir, "history.json"), JSON.stringify({ seed, options, faults, history }, null, 1))
      return { ok: false, ops, okOps, infoOps, lostAckedWrites: 0, anomalies: [], recoveryMs: undefined, dir, error: String(result.cause) } satisfies RunResult
    }
    const r = result.value
    if (r.ok) rmSync(dir, { recursive: true, force: true })
    return { ok: r.ok, ops, okOps, infoOps, lostAckedWrites: r.lostAckedWrites, anomalies: r.anomalies, recoveryMs: r.recoveryMs, dir, ...(r.error !== undefined ? { error: r.error } : {}) } satisfies RunResult
  })

const main = Effect.gen(function*() {
  if (!WORKLOADS.includes(options.workload)) return yield* new TortureError({ message: `--workload must be one of ${WORKLOADS.join(", ")}` })
  if (!FAULTS.includes(options.fault)) return yield* new TortureError({ message: `--fault must be one of ${FAULTS.join(", ")}` })
  if (options.fault === "partition" || options.fault === "mixed") {
    const why = iptablesUsable()
    if (why !== undefined) return yield* new TortureError({ message: `${why}: partition faults need iptables (scripts/setup.sh installs it)` })
  }
  const results: Array<RunResult> = []
  for (let i = 0; i < options.runs; i++) {
    const r = yield* runOnce(i)
    results.push(r)
    console.log(
      `run ${i + 1}/${options.runs} seed ${options.seed + i}: ${r.ok ? "ok" : "FAILED"}; ops ${r.ops} (ok ${r.okOps}, info ${r.infoOps}); ` +
        `lost ${r.lostAckedWrites}; anomalies ${r.anomalies.length}; recovery ${r.recoveryMs ?? "-"} ms` +
        (r.ok ? "" : `; kept ${r.dir}${r.error !== undefined ? `; ${r.error}` : ""}`)
    )
    for (const a of r.anomalies.slice(0, 10)) console.log(`  anomaly: ${a}`)
  }
  const summary = {
    bench: "torture",
    workload: options.workload,
    fault: options.fault,
    runs: options.runs,
    failedRuns: results.filter((r) => !r.ok).length,
    lostAckedWrites: results.reduce((a, r) => a + r.lostAckedWrites, 0),
    anomalies: results.reduce((a, r) => a + r.anomalies.length, 0),
    recoveredRuns: results.filter((r) => r.recoveryMs !== undefined).length,
    maxRecoveryMs: Math.max(0, ...results.map((r) => r.recoveryMs ?? 0))
  }
  console.log(JSON.stringify(summary))
  if (summary.failedRuns > 0 || summary.anomalies > 0 || summary.lostAckedWrites > 0) process.exitCode = 1
})

NodeRuntime.runMain(main.pipe(Effect.tapError((e) => Effect.sync(() => {
  console.error(`torture: ${e.message}`)
  process.exitCode = 2
}))), { disableErrorReporting: true })
