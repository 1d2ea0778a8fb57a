/**
 * Switchover benchmark: a 3-node cluster under an 8-thread write load through the RW ports
 * (the writers spread over every node's port, so most go through a node that is not the
 * master). SWITCHOVER_RUNS times (default 10) the master is asked to hand over (POST
 * /switchover, to a caught-up replica). Unavailable = the longest gap between successful
 * writes (any writer) around a switchover. At the end, every acknowledged id must be on
 * every node. Prints one JSON line:
 * {"bench":"switchover","runs":N,"unavailableP50Ms":N,"unavailableMaxMs":N,"lostAckedWrites":N}.
 */
import { NodeRuntime } from "@effect/platform-node"
import { Effect } from "effect"
import { requestSwitchover } from "../src/client/StatusClient.js"
import * as LocalCluster from "../src/testing/LocalCluster.js"
import { ackedMissing, adminQuery, createAppUser, printNodeWarnings, startWriter, waitConverged, waitForMaster, writesFlowing } from "../test/support/dbCluster.js"

const runs = Number(process.env.SWITCHOVER_RUNS ?? 10)
const THREADS = 8
// startWriter numbers its ids from 1: one table per writer keeps them unique.
const tableOf = (thread: number) => `d.w${thread}`

/** The longest gap between consecutive acknowledgements (any writer) that overlaps [from, to]. */
const longestGap = (times: ReadonlyArray<number>, from: number, to: number): number => {
  const sorted = [...times].sort((a, b) => a - b)
  let gap = 0
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i]! < from || sorted[i - 1]! > to) continue
    gap = Math.max(gap, sorted[i]! - sorted[i - 1]!)
  }
  return gap
}

let cluster: LocalCluster.LocalCluster | undefined

const program = Effect.gen(function*() {
  const c = cluster = yield* LocalCluster.make({ nodes: 3, database: true })
  const first = yield* waitForMaster(c, "a first master")
  yield* createAppUser(first)
  yield* adminQuery(first, "CREATE DATABASE d")
  for (let t = 0; t < THREADS; t++) yield* adminQuery(first, `CREATE TABLE ${tableOf(t)} (id INT PRIMARY KEY, v INT)`)
  yield* waitConverged(c, 60_000)

  const gaps: Array<number> = []
  const writers = yield* Effect.scoped(Effect.gen(function*() {
    const writers = yield* Effect.forEach(Array.from({ length: THREADS }, (_, t) => t), (t) =>
      startWriter(c.nodes[t % c.nodes.length]!.rwPort!, tableOf(t), 10_000_000))
    const flowing = (what: string) => writesFlowing(writers, what)
    for (let i = 0; i < runs; i++) {
      yield* flowing("every writer to get writes through")
      const master = yield* waitForMaster(c, "a serving master")
      const t0 = Date.now()
      const done = yield* requestSwitchover({ address: `${master.host}:${master.adminPort}`, token: c.adminToken }, undefined)
      const t1 = Date.now()
      // Until every writer got a write through again (those whose connection was closed reconnect).
      yield* flowing("every writer to get writes through after the switchover")
      const gap = longestGap(writers.flatMap((w) => w.ackedAt), t0, t1)
      gaps.push(gap)
      process.stderr.write(`switchover ${i + 1}: node ${done.from} -> node ${done.master}, handover ${done.handoverMs} ms, longest write gap ${gap} ms\n`)
    }
    return writers
  }))

  yield* waitConverged(c, 60_000)
  let lost = 0
  for (const [t, w] of writers.entries()) {
    const missing = yield* ackedMissing(c.nodes, w, tableOf(t))
    lost += missing.length
    process.stderr.write(`${tableOf(t)}: ${w.acked.length} acked, ${w.indeterminate.length} indeterminate, ${missing.length} acked missing\n`)
  }
  const sorted = [...gaps].sort((a, b) => a - b)
  console.log(JSON.stringify({
    bench: "switchover",
    runs,
    unavailableP50Ms: sorted[Math.floor(sorted.length / 2)],
    unavailableMaxMs: sorted[sorted.length - 1],
    lostAckedWrites: lost
  }))
}).pipe(Effect.tapError(() => printNodeWarnings(cluster?.nodes ?? [])))

NodeRuntime.runMain(Effect.scoped(program))
