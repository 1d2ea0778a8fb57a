/**
 * Election benchmark: 3 agent processes with default lease settings; the master agent is
 * SIGKILLed 20 times (restarted each time). Each figure is the time from the kill until
 * another node reports itself master. Prints one JSON line:
 * {"bench":"election","runs":20,"p50Ms":N,"p99Ms":N,"maxMs":N}. Env: BENCH_RUNS.
 */
import { NodeRuntime } from "@effect/platform-node"
import { Effect, Schedule } from "effect"
import type { NodeStatus } from "../src/domain/cluster/nodeStatus.js"
import * as LocalCluster from "../src/testing/LocalCluster.js"
import { fetchStatus } from "../src/client/StatusClient.js"

const runs = Number(process.env.BENCH_RUNS ?? 20)

const program = Effect.gen(function*() {
  const cluster = yield* LocalCluster.make({ nodes: 3, clusterId: "election" })
  const statusOf = (n: LocalCluster.LocalNode) => fetchStatus(`127.0.0.1:${n.adminPort}`, 500)
  const masterAmong = (nodes: ReadonlyArray<LocalCluster.LocalNode>) =>
    Effect.map(Effect.forEach(nodes, statusOf, { concurrency: "unbounded" }), (ss) =>
      ss.filter((s): s is NodeStatus => !("error" in s) && s.role === "master").map((s) => s.nodeId))
  const waitMaster = (nodes: ReadonlyArray<LocalCluster.LocalNode>) =>
    masterAmong(nodes).pipe(
      Effect.repeat({ schedule: Schedule.spaced("10 millis"), until: (m) => m.length === 1 }),
      Effect.map((m) => m[0]!),
      Effect.timeout("30 seconds")
    )

  const times: Array<number> = []
  for (let run = 0; run < runs; run++) {
    const master = yield* waitMaster(cluster.nodes)
    const victim = cluster.nodes[master - 1]!
    const others = cluster.nodes.filter((n) => n !== victim)
    const t0 = performance.now()
    yield* victim.kill("SIGKILL")
    const next = yield* waitMaster(others)
    const dt = performance.now() - t0
    times.push(dt)
    process.stderr.write(`election ${run + 1}: node ${master} killed, node ${next} master after ${Math.round(dt)} ms\n`)
    yield* victim.start
    // Back in the cluster (knows the new master) before the next kill.
    yield* statusOf(victim).pipe(
      Effect.repeat({ schedule: Schedule.spaced("20 millis"), until: (s) => !("error" in s) && s.master === next }),
      Effect.timeout("30 seconds")
    )
  }
  const sorted = [...times].sort((a, b) => a - b)
  const at = (p: number) => Math.round(sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!)
  console.log(JSON.stringify({ bench: "election", runs, p50Ms: at(50), p99Ms: at(99), maxMs: Math.round(sorted[sorted.length - 1]!) }))
})

NodeRuntime.runMain(Effect.scoped(program))
