/**
 * Paxos log benchmark: 3 node processes on loopback with durable LMDB in temp dirs,
 * 64 concurrent proposers of 200-byte values for 10 s through the master node (whose lease
 * makes it the Paxos leader; the values are not cluster entries, so the state machine
 * rejects them as malformed after they are chosen, which costs it little). Prints one JSON
 * line: {"bench":"paxos","nodes":3,"valuesPerSec":N,"p50Ms":N,"p99Ms":N,"instancesPerSec":N}
 * (progress goes to stderr). Env: BENCH_SECONDS, BENCH_PROPOSERS, BENCH_VALUE_BYTES, BENCH_PAXOS_TUNING (JSON),
 * BENCH_AGENT_NODE_ARGS (extra node arguments for the nodes, e.g. "--cpu-prof --cpu-prof-dir=DIR").
 */
import { NodeRuntime } from "@effect/platform-node"
import { Effect, Ref, Schedule } from "effect"
import * as LocalCluster from "../src/testing/LocalCluster.js"
import * as PaxosClient from "../src/client/PaxosClient.js"
import { fetchStatus } from "../src/client/StatusClient.js"

const seconds = Number(process.env.BENCH_SECONDS ?? 10)
const proposers = Number(process.env.BENCH_PROPOSERS ?? 64)
const valueBytes = Number(process.env.BENCH_VALUE_BYTES ?? 200)
const nodes = 3

const percentile = (sorted: Float64Array, p: number) =>
  sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!

const round2 = (x: number) => Math.round(x * 100) / 100

const program = Effect.gen(function*() {
  const tuning = process.env.BENCH_PAXOS_TUNING
  const nodeArgs = process.env.BENCH_AGENT_NODE_ARGS?.split(" ").filter((a) => a !== "")
  const cluster = yield* LocalCluster.make({
    nodes,
    clusterId: "bench",
    paxos: { acceptClients: true, ...(tuning ? JSON.parse(tuning) : {}) },
    ...(nodeArgs !== undefined ? { nodeArgs } : {})
  })
  // Propose through the master: the lease holder leads the Paxos log, so nothing is forwarded.
  const masterId = yield* Effect.forEach(cluster.nodes, (n) => fetchStatus(`127.0.0.1:${n.adminPort}`, 500)).pipe(
    Effect.map((ss) => ss.flatMap((st) => ("error" in st || st.role !== "master" ? [] : [st.nodeId]))),
    Effect.repeat({ schedule: Schedule.spaced("20 millis"), until: (m) => m.length === 1 }),
    Effect.map((m) => m[0]!),
    Effect.timeout("30 seconds")
  )
  const leaderNode = cluster.nodes[masterId - 1]!
  const client = yield* PaxosClient.connect({ clusterId: cluster.clusterId, host: "127.0.0.1", port: leaderNode.peerPort })
  const value = new Uint8Array(valueBytes).fill(120)

  // Warm up: elect a leader and let connections settle.
  // (A proposal superseded while leadership settles is no measurement: ignored here.)
  yield* Effect.forEach(Array.from({ length: 200 }), () => Effect.ignore(client.propose(value)), { concurrency: proposers, discard: true })

  const latencies = new Float64Array(4_000_000)
  const count = yield* Ref.make(0)
  const errors = yield* Ref.make(0)
  const before = yield* client.status
  const start = performance.now()
  const deadline = start + seconds * 1000
  const proposer = Effect.gen(function*() {
    while (performance.now() < deadline) {
      const t0 = performance.now()
      const ok = yield* client.propose(value).pipe(Effect.as(true), Effect.catch(() => Effect.succeed(false)))
      const dt = performance.now() - t0
      if (!ok) {
        yield* Ref.update(errors, (n) => n + 1)
        continue
      }
      const n = yield* Ref.getAndUpdate(count, (k) => k + 1)
      if (n < latencies.length) latencies[n] = dt
    }
  })
  yield* Effect.forEach(Array.from({ length: proposers }), () => proposer, { concurrency: "unbounded", discard: true })
  const elapsed = (performance.now() - start) / 1000
  const after = yield* client.status
  const n = yield* Ref.get(count)
  const sorted = latencies.slice(0, Math.min(n, latencies.length)).sort()
  process.stderr.write(`bench: ${n} values in ${elapsed.toFixed(2)} s, ${yield* Ref.get(errors)} errors, ${after.chosenUpTo - before.chosenUpTo} instances\n`)
  for (const node of cluster.nodes) {
    const st = yield* fetchStatus(`127.0.0.1:${node.adminPort}`, 1_000)
    if (!("error" in st)) process.stderr.write(`node ${node.nodeId} (${st.paxos.role}): write ${JSON.stringify(st.paxos.writeMs)} round ${JSON.stringify(st.paxos.roundMs)}\n`)
  }
  console.log(JSON.stringify({
    bench: "paxos",
    nodes,
    valuesPerSec: Math.round(n / elapsed),
    p50Ms: round2(percentile(sorted, 50)),
    p99Ms: round2(percentile(sorted, 99)),
    instancesPerSec: Math.round((after.chosenUpTo - before.chosenUpTo) / elapsed)
  }))
})

NodeRuntime.runMain(Effect.scoped(program), { disableErrorReporting: false })
