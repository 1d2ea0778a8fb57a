/**
 * Storage benchmark: a 3-node cluster with the default retention (or BENCH_RETAIN_MB), and
 * BENCH_MINUTES (10) of sysbench oltp_write_only (8 threads) through the master's RW port.
 * Each node's bytes on disk are sampled every 10 s (stderr). Prints one JSON line:
 * {"bench":"storage","minutes":N,"txns":N,"logMbPerNode":N,"mariadbBinlogMbPerNode":N,"retainMb":N}
 * txns: transactions sysbench committed; logMbPerNode: the largest, over the nodes, of the
 * agent's own stores at the end (the Paxos log, its index and the cluster state:
 * dataDir/paxos + dataDir/state); mariadbBinlogMbPerNode: the largest sum of a node's
 * MariaDB binlog files (SHOW BINARY LOGS) at the end; retainMb: log.retainMb in effect.
 * Env: BENCH_MINUTES (10), BENCH_RETAIN_MB (unset: the default, 1024).
 */
import { NodeRuntime } from "@effect/platform-node"
import { Effect, Fiber } from "effect"
import { readdirSync, readFileSync, statSync } from "node:fs"
import { join } from "node:path"
import { DEFAULT_RETAIN_MB } from "../src/config/NodeConfig.js"
import * as LocalCluster from "../src/testing/LocalCluster.js"
import { adminQuery, APP_PASSWORD, APP_USER, createAppUser, waitForMaster } from "../test/support/dbCluster.js"
import { sysbench } from "./support/sysbench.js"

const minutes = Number(process.env.BENCH_MINUTES ?? 10)
const retainEnv = process.env.BENCH_RETAIN_MB
const retainMb = retainEnv !== undefined ? Number(retainEnv) : DEFAULT_RETAIN_MB
const MB = 1024 * 1024
const round = (x: number) => Math.round(x * 10) / 10

/** Bytes of the files under `path` (0 when it is gone). */
const bytesUnder = (path: string): number => {
  try {
    const st = statSync(path)
    if (!st.isDirectory()) return st.size
    return readdirSync(path).reduce((n, f) => n + bytesUnder(join(path, f)), 0)
  } catch {
    return 0
  }
}

const dataDirOf = (n: LocalCluster.LocalNode) => (JSON.parse(readFileSync(n.configPath, "utf8")) as { dataDir: string }).dataDir

/** One node's stores, in MB. */
const usage = (n: LocalCluster.LocalNode) =>
  Effect.gen(function*() {
    const dir = dataDirOf(n)
    const binlog = yield* adminQuery<{ File_size: number | string }>(n, "SHOW BINARY LOGS").pipe(
      Effect.map((rows) => rows.reduce((s, r) => s + Number(r.File_size), 0)),
      Effect.orElseSucceed(() => NaN)
    )
    const wal = bytesUnder(join(dir, "paxos", "wal"))
    const index = bytesUnder(join(dir, "paxos", "index"))
    const state = bytesUnder(join(dir, "state"))
    return { node: n.nodeId, walMb: round(wal / MB), indexMb: round(index / MB), stateMb: round(state / MB), logMb: round((wal + index + state) / MB), binlogMb: round(binlog / MB) }
  })

const program = Effect.scoped(Effect.gen(function*() {
  const c = yield* LocalCluster.make({ nodes: 3, database: true, ...(retainEnv !== undefined ? { log: { retainMb } } : {}) })
  const master = yield* waitForMaster(c, "a first master")
  yield* createAppUser(master)
  yield* adminQuery(master, "CREATE DATABASE IF NOT EXISTS sbtest")
  const sb = (threads: number, extra: ReadonlyArray<string>) =>
    sysbench({ test: "oltp_write_only", port: master.rwPort!, user: APP_USER, password: APP_PASSWORD, threads, extra })
  yield* sb(4, ["prepare"])
  const peak = new Map<number, { logMb: number; binlogMb: number }>()
  const sample = Effect.gen(function*() {
    const all = yield* Effect.forEach(c.nodes, usage)
    for (const u of all) {
      const p = peak.get(u.node) ?? { logMb: 0, binlogMb: 0 }
      peak.set(u.node, { logMb: Math.max(p.logMb, u.logMb), binlogMb: Math.max(p.binlogMb, u.binlogMb || 0) })
    }
    process.stderr.write(`storage: ${JSON.stringify(all)}\n`)
    return all
  })
  const sampler = yield* sample.pipe(Effect.andThen(Effect.sleep("10 seconds")), Effect.forever, Effect.forkScoped)
  const out = yield* sb(8, [`--time=${Math.round(minutes * 60)}`, "--report-interval=0", "run"])
  yield* Fiber.interrupt(sampler)
  const txns = Number(/transactions:\s+(\d+)/.exec(out)?.[1] ?? NaN)
  // Compaction runs every 5 s: the end state after one more round.
  yield* Effect.sleep("12 seconds")
  const end = yield* sample
  process.stderr.write(`storage: peak during the run ${JSON.stringify([...peak])}\n`)
  console.log(JSON.stringify({
    bench: "storage",
    minutes,
    txns,
    logMbPerNode: Math.max(...end.map((u) => u.logMb)),
    mariadbBinlogMbPerNode: Math.max(...end.map((u) => u.binlogMb)),
    retainMb
  }))
}))

NodeRuntime.runMain(program)
