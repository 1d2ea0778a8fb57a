/**
 * Failover benchmark: a 3-node cluster under a steady write load (one writer through each
 * node's RW port, so some writer always goes through a node that is not the master). The
 * serving master's mariadbd is SIGKILLed FAILOVER_RUNS times (default 10); RTO is the time
 * from the kill to the acknowledgement of the first write any writer sent after it.
 * Between kills the cluster converges and serves again. At the end, every acknowledged id
 * must be on every node. Prints one JSON line:
 * {"bench":"failover","runs":N,"rtoP50Ms":N,"rtoMaxMs":N,"lostAckedWrites":N}.
 */
import { NodeRuntime } from "@effect/platform-node"
import { Effect } from "effect"
import * as LocalCluster from "../src/testing/LocalCluster.js"
import {
  ackedMissing,
  adminQuery,
  createAppUser,
  mariadbPid,
  printNodeWarnings,
  startWriter,
  waitConverged,
  waitForMaster,
  type Writer,
  writesFlowing
} from "../test/support/dbCluster.js"

const runs = Number(process.env.FAILOVER_RUNS ?? 10)
// startWriter numbers its ids from 1: one table per writer keeps them unique.
const tableOf = (nodeId: number) => `d.t${nodeId}`

/** Highest id each writer has an outcome for (acknowledged or failed). */
const lastIds = (writers: ReadonlyArray<Writer>) =>
  writers.map((w) => Math.max(w.acked.at(-1) ?? 0, w.indeterminate.at(-1) ?? 0))

/**
 * When the first write issued after the kill was acknowledged, by any writer. A writer has
 * at most one write (last + 1) in flight at the kill, whose OK may still be on its way
 * through the proxies: only ids from last + 2 on were certainly sent after the kill.
 */
const firstAckAfter = (writers: ReadonlyArray<Writer>, last: ReadonlyArray<number>): number | undefined => {
  let first: number | undefined
  for (const [j, w] of writers.entries()) {
    const i = w.acked.findIndex((id) => id >= last[j]! + 2)
    if (i >= 0 && (first === undefined || w.ackedAt[i]! < first)) first = w.ackedAt[i]!
  }
  return first
}

// Set once started: on failure its nodes' warnings and errors go to stderr.
let cluster: LocalCluster.LocalCluster | undefined

const program = Effect.gen(function*() {
  const c = cluster = yield* LocalCluster.make({ nodes: 3, database: true })
  const first = yield* waitForMaster(c, "a first master")
  yield* createAppUser(first)
  yield* adminQuery(first, "CREATE DATABASE d")
  for (const n of c.nodes) yield* adminQuery(first, `CREATE TABLE ${tableOf(n.nodeId)} (id INT PRIMARY KEY, v INT)`)
  yield* waitConverged(c, 60_000)

  const rtos: Array<number> = []
  // The writers stop (their scope closes) before the nodes are compared.
  const writers = yield* Effect.scoped(Effect.gen(function*() {
    const writers = yield* Effect.forEach(c.nodes, (n) => startWriter(n.rwPort!, tableOf(n.nodeId), 10_000_000))
    // Each kill hits a steady load: every writer, whatever node it goes through, is writing.
    const flowing = (what: string) => writesFlowing(writers, what)
    for (let i = 0; i < runs; i++) {
      yield* flowing("every writer to get writes through")
      const master = yield* waitForMaster(c, "a serving master")
      const pid = mariadbPid(master)
      const last = lastIds(writers)
      const t0 = Date.now()
      process.kill(pid, "SIGKILL")
      yield* LocalCluster.waitFor("a write acknowledged after the kill", Effect.sync(() => firstAckAfter(writers, last) !== undefined), 60_000)
      const rto = firstAckAfter(writers, last)! - t0
      rtos.push(rto)
      const t1 = Date.now()
      yield* waitConverged(c, 60_000)
      const next = yield* waitForMaster(c, "a serving master after convergence")
      process.stderr.write(
        `failover ${i + 1}: node ${master.nodeId}'s mariadbd killed, RTO ${rto} ms, node ${next.nodeId} master, converged ${Date.now() - t1} ms later\n`
      )
    }
    return writers
  }))

  yield* waitConverged(c, 60_000)
  let lost = 0
  for (const [i, w] of writers.entries()) {
    const table = tableOf(c.nodes[i]!.nodeId)
    const missing = yield* ackedMissing(c.nodes, w, table)
    lost += missing.length
    process.stderr.write(`${table}: ${w.acked.length} acked, ${w.indeterminate.length} indeterminate, ${missing.length} acked missing${missing.length > 0 ? ` (${missing.slice(0, 10).join(",")})` : ""}\n`)
  }
  const sorted = [...rtos].sort((a, b) => a - b)
  console.log(JSON.stringify({
    bench: "failover",
    runs,
    rtoP50Ms: sorted[Math.floor(sorted.length / 2)],
    rtoMaxMs: sorted[sorted.length - 1],
    lostAckedWrites: lost
  }))
}).pipe(Effect.tapError(() => printNodeWarnings(cluster?.nodes ?? [])))

NodeRuntime.runMain(Effect.scoped(program))
