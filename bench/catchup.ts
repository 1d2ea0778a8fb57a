/**
 * Catch-up benchmark: 3 nodes; 4 connections commit 1 MiB rows through the master's RW
 * port; one replica's agent is paused (SIGSTOP) for 30 s, then resumed while the load
 * goes on. Prints one JSON line:
 * {"bench":"catchup","pausedS":30,"lagBytesAtResume":N,"catchupMs":N,"writeTpsDuring":N,
 *  "writeTpsBefore":N,"masterAdminMaxMs":N}
 * lagBytesAtResume: bytes of the transactions committed while the agent was paused (what
 * it is behind by); catchupMs: from the resume until that node's database is within one
 * round of the load (its GTID at most the number of writers behind the master's log
 * head); writeTpsBefore: commits per second before the pause; writeTpsDuring: from the resume until caught up; masterAdminMaxMs: the
 * slowest answer of the master's /status, polled every 100 ms through the whole run.
 * Env: BENCH_PAUSE_SECONDS (30), BENCH_BEFORE_SECONDS (15), BENCH_ROW_BYTES (1 MiB),
 * BENCH_WRITERS (4), BENCH_CATCHUP_TIMEOUT_SECONDS (120), BENCH_LOG_DIR (write each node's log there),
 * BENCH_AGENT_NODE_ARGS (extra node arguments for the agents, e.g. "--cpu-prof --cpu-prof-dir=DIR").
 */
import { NodeRuntime } from "@effect/platform-node"
import { Effect, Schedule } from "effect"
import { writeFileSync } from "node:fs"
import * as LocalCluster from "../src/testing/LocalCluster.js"
import { countBetween, startBlobWriters } from "./support/blobWriters.js"
import { adminQuery, connect, createAppUser, run as sql, statusOf, waitForMaster } from "../test/support/dbCluster.js"

const pauseSeconds = Number(process.env.BENCH_PAUSE_SECONDS ?? 30)
const beforeSeconds = Number(process.env.BENCH_BEFORE_SECONDS ?? 15)
const rowBytes = Number(process.env.BENCH_ROW_BYTES ?? 1024 * 1024)
const writers = Number(process.env.BENCH_WRITERS ?? 4)
const catchupTimeoutMs = Number(process.env.BENCH_CATCHUP_TIMEOUT_SECONDS ?? 120) * 1000
const startLoad = (port: number) =>
  startBlobWriters({ port, database: "bench", writers, rowBytes, maxMs: catchupTimeoutMs + (beforeSeconds + pauseSeconds + 60) * 1000 })

const program = Effect.gen(function*() {
  const nodeArgs = process.env.BENCH_AGENT_NODE_ARGS?.split(" ").filter((a) => a !== "")
  const c = yield* LocalCluster.make({ nodes: 3, database: true, ...(nodeArgs !== undefined ? { nodeArgs } : {}) })
  const master = yield* waitForMaster(c, "a first master")
  yield* createAppUser(master)
  yield* Effect.scoped(Effect.flatMap(connect(master.rwPort!), (conn) =>
    Effect.andThen(sql(conn, "CREATE DATABASE bench"), sql(conn, "CREATE TABLE bench.t (id INT AUTO_INCREMENT PRIMARY KEY, b LONGBLOB NOT NULL)"))))
  const replica = c.nodes.find((n) => n.nodeId !== master.nodeId)!

  // The master's /status, polled through the whole run: its slowest answer.
  let adminMaxMs = 0
  let polling = true
  const poller = (async () => {
    while (polling) {
      const t0 = performance.now()
      await Effect.runPromise(statusOf(master))
      adminMaxMs = Math.max(adminMaxMs, performance.now() - t0)
      await new Promise((r) => setTimeout(r, 100))
    }
  })()

  const capturedBytes = Effect.map(statusOf(master), (s) => ("error" in s ? NaN : s.commitPath?.bytes ?? NaN))
  const load = startLoad(master.rwPort!)
  const loadStart = performance.now()
  yield* Effect.sleep(`${beforeSeconds} seconds`)
  const pausedAt = performance.now()
  const bytesAtPause = yield* capturedBytes
  process.kill(replica.pid()!, "SIGSTOP")
  process.stderr.write(`catchup: node ${replica.nodeId}'s agent paused; master is node ${master.nodeId}\n`)
  yield* Effect.sleep(`${pauseSeconds} seconds`)
  const lagBytes = (yield* capturedBytes) - bytesAtPause
  process.kill(replica.pid()!, "SIGCONT")
  const resumedAt = performance.now()
  process.stderr.write(`catchup: resumed, ${(lagBytes / 2 ** 20).toFixed(0)} MiB behind\n`)
  // Caught up against the log's head as the master sees it: the resumed node's own view of
  // the log trails until it has learned the instances it missed, so its own lag says little.
  const seqOf = (gtid: string | null | undefined) => (gtid == null ? NaN : Number(gtid.split("-")[2]))
  let reportedAt = resumedAt
  // Checked every 250 ms (two /status calls): at the 50 ms of LocalCluster.waitFor the
  // benchmark's own polling took 5-7 % of the agents' busy time, on a 2-core machine it shares.
  const caughtUp = Effect.gen(function*() {
    const head = yield* statusOf(master)
    const r = yield* statusOf(replica)
    if ("error" in head || "error" in r) return false
    const now = performance.now()
    if (now - reportedAt >= 5_000) {
      reportedAt = now
      // What the replica has received (IO thread) against what it has executed.
      const io = yield* adminQuery<Record<string, unknown>>(replica, "SHOW SLAVE STATUS").pipe(
        Effect.map((rows) => String(rows[0]?.["Gtid_IO_Pos"] ?? "?")),
        Effect.orElseSucceed(() => "?")
      )
      process.stderr.write(`catchup: received ${io}\n`)
      process.stderr.write(
        `catchup: +${((now - resumedAt) / 1000).toFixed(0)} s: log applied ${r.appliedInstance} of ${head.appliedInstance}, database ${r.database?.localGtid} of ${head.lastGtid} (${r.database?.role}${r.database?.replicationError ? `: ${r.database.replicationError}` : ""})\n`
      )
    }
    return seqOf(r.database?.localGtid) >= seqOf(head.lastGtid) - writers
  })
  yield* caughtUp.pipe(
    Effect.repeat({ schedule: Schedule.spaced("250 millis"), until: (ok) => ok }),
    Effect.timeoutOrElse({
      duration: `${catchupTimeoutMs} millis`,
      orElse: () => Effect.fail(new Error(`the resumed node's database did not catch up within ${catchupTimeoutMs} ms`))
    }),
    Effect.tapError(() => Effect.sync(() => process.stderr.write(`catchup: not caught up within ${catchupTimeoutMs} ms\n`)))
  )
  const caughtUpAt = performance.now()
  // The nodes' own logs, for reading what happened during the catch-up.
  const logDir = process.env.BENCH_LOG_DIR
  if (logDir !== undefined) for (const n of c.nodes) writeFileSync(`${logDir}/node${n.nodeId}.log`, n.output())
  yield* load.stop
  polling = false
  yield* Effect.promise(() => poller)
  const round = (x: number) => Math.round(x * 100) / 100
  const tpsBefore = countBetween(load.acks, loadStart, pausedAt) / ((pausedAt - loadStart) / 1000)
  const tpsDuring = countBetween(load.acks, resumedAt, caughtUpAt) / Math.max(0.001, (caughtUpAt - resumedAt) / 1000)
  process.stderr.write(`catchup: ${load.acks.length} commits, ${load.state.errors} errors; during the pause ${(countBetween(load.acks, pausedAt, resumedAt) / pauseSeconds).toFixed(1)} per second\n`)
  for (const [message, n] of load.state.messages) process.stderr.write(`catchup: ${n} x ${message}\n`)
  console.log(JSON.stringify({
    bench: "catchup",
    pausedS: pauseSeconds,
    lagBytesAtResume: lagBytes,
    catchupMs: Math.round(caughtUpAt - resumedAt),
    writeTpsDuring: round(tpsDuring),
    writeTpsBefore: round(tpsBefore),
    masterAdminMaxMs: Math.round(adminMaxMs)
  }))
})

NodeRuntime.runMain(Effect.scoped(program))
