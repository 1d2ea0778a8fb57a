/**
 * Add-node benchmark: a 3-node cluster loaded with about BENCH_DATA_MB (1024) MB of InnoDB
 * data, under a steady write load (WRITERS, 4, one-row INSERTs through the RW ports of the
 * replicas). A 4th node is started with --join and added (POST /members as a learner; it
 * takes a mariadb-backup copy of a replica's database and catches up; then POST
 * /members/4/voter until it is taken). Prints one JSON line:
 * {"bench":"addnode","dataMb":N,"addMs":N,"writeTpsDuringVsBefore":N}
 * addMs: from the add request until node 4 is a voter; writeTpsDuringVsBefore: the
 * writers' acknowledged writes per second during the add over those in the 10 s before.
 * The new node's table is compared with the master's after the clock stops.
 * Env: BENCH_DATA_MB (1024), WRITERS (4).
 */
import { NodeRuntime } from "@effect/platform-node"
import { Effect, Schedule } from "effect"
import { requestAddMember, requestPromoteMember } from "../src/client/StatusClient.js"
import * as LocalCluster from "../src/testing/LocalCluster.js"
import { adminQuery, checksum, createAppUser, startWriter, waitForMaster } from "../test/support/dbCluster.js"
import { loadMegabytes } from "./support/load.js"

const dataMb = Number(process.env.BENCH_DATA_MB ?? 1024)
const writers = Number(process.env.WRITERS ?? 4)
const round = (x: number) => Math.round(x * 100) / 100

const program = Effect.scoped(Effect.gen(function*() {
  const c = yield* LocalCluster.make({ nodes: 3, database: true, ...(process.env.BENCH_DIR ? { dir: process.env.BENCH_DIR } : {}) })
  yield* createAppUser(yield* waitForMaster(c, "a first master"))
  const { innodbMb, master } = yield* loadMegabytes(c, dataMb, "addnode")
  yield* adminQuery(master, "CREATE TABLE rb.w (id INT PRIMARY KEY, v INT)")
  for (let w = 1; w < writers; w++) yield* adminQuery(master, `CREATE TABLE rb.w${w} (id INT PRIMARY KEY, v INT)`)
  const { node, member } = yield* c.addNode(4)
  const result = yield* Effect.scoped(Effect.gen(function*() {
    const replicas = c.nodes.filter((n) => n !== master)
    const load = yield* Effect.forEach(Array.from({ length: writers }, (_, w) => w), (w) =>
      startWriter(replicas[w % replicas.length]!.rwPort!, w === 0 ? "rb.w" : `rb.w${w}`, 10_000_000))
    const acked = () => load.reduce((n, w) => n + w.acked.length, 0)
    yield* LocalCluster.waitFor("the writers to get going", Effect.sync(() => acked() > 50), 60_000)
    const t0 = performance.now()
    const a0 = acked()
    yield* Effect.sleep("10 seconds") // the measuring window itself, not a wait for a condition
    const beforeTps = (acked() - a0) / ((performance.now() - t0) / 1000)
    yield* node.start
    const masterAdmin = { address: `${master.host}:${master.adminPort}`, token: c.adminToken }
    const start = performance.now()
    const a1 = acked()
    yield* requestAddMember(masterAdmin, { id: 4, host: member.host, port: member.port, adminPort: member.adminPort, rwPort: member.rwPort!, roPort: member.roPort!, forwardRwPort: member.forwardRwPort!, forwardRoPort: member.forwardRoPort! })
    yield* requestPromoteMember(masterAdmin, 4).pipe(Effect.retry({ schedule: Schedule.spaced("200 millis"), times: 3_000 }))
    const addMs = performance.now() - start
    const duringTps = (acked() - a1) / (addMs / 1000)
    process.stderr.write(`addnode: ${Math.round(beforeTps)} writes/s before, ${Math.round(duringTps)} during the add (${Math.round(addMs)} ms)\n`)
    process.stderr.write(`addnode: ${node.output().split("\n").filter((l) => l.includes("rebuild")).slice(-4).join("\n")}\n`)
    return { addMs, ratio: duringTps / beforeTps }
  }))
  const [a, b] = [yield* checksum(master, "rb.t"), yield* checksum(node, "rb.t")]
  if (a !== b) return yield* Effect.die(new Error(`the new node's table differs: ${b} against ${a}`))
  console.log(JSON.stringify({ bench: "addnode", dataMb: round(innodbMb), addMs: Math.round(result.addMs), writeTpsDuringVsBefore: round(result.ratio) }))
}))

NodeRuntime.runMain(program)
