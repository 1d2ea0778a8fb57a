/**
 * Large-transaction benchmark: one transaction of BENCH_ROWS (100) rows of 1 MiB, first on
 * a lone mariadbd, then through a 3-node cluster's RW port, while one other connection
 * commits small rows. Prints one JSON line:
 * {"bench":"bigtxn","sizeMb":N,"aloneMs":N,"clusterMs":N,"vsAlone":N,"smallCommitsDuring":N,
 *  "smallCommitMaxMs":N,"agentPeakRssMb":N}
 * aloneMs / clusterMs: BEGIN to COMMIT's answer; vsAlone: clusterMs / aloneMs;
 * smallCommitsDuring, smallCommitMaxMs: the cluster's small commits while the large one
 * ran; agentPeakRssMb: the largest RSS of any agent, sampled every 50 ms from before the
 * transaction until every replica's database has all of it.
 * Env: BENCH_ROWS (100), BENCH_ROW_BYTES (1 MiB), BENCH_DIR (keep the cluster's directory, agent logs included, there),
 * BENCH_AGENT_NODE_ARGS (extra node arguments for the agents, e.g. "--cpu-prof --cpu-prof-dir=DIR").
 */
import { NodeRuntime } from "@effect/platform-node"
import { Effect } from "effect"
import * as LocalCluster from "../src/testing/LocalCluster.js"
import { bigTxnSchema, runBigTxn } from "../test/support/bigTxn.js"
import { adminQuery, APP_PASSWORD, APP_USER, connect, createAppUser, run as sql, statusOf, waitForMaster } from "../test/support/dbCluster.js"
import { MariaDbInstance } from "../test/support/MariaDbInstance.js"
import { rssMb } from "./support/proc.js"

const rows = Number(process.env.BENCH_ROWS ?? 100)
const rowBytes = Number(process.env.BENCH_ROW_BYTES ?? 1024 * 1024)
const round = (x: number) => Math.round(x * 10) / 10

const bigTxn = (port: number) =>
  Effect.promise(() => runBigTxn({ port, user: APP_USER, password: APP_PASSWORD, database: "bigtxn", rows, rowBytes }))

const alone = Effect.gen(function*() {
  const db = yield* MariaDbInstance.make({ serverId: 1, extraConfig: { max_allowed_packet: "64M" } })
  for (const statement of bigTxnSchema("bigtxn")) yield* db.query(statement)
  yield* db.query(`CREATE USER '${APP_USER}'@'%' IDENTIFIED BY '${APP_PASSWORD}'`)
  yield* db.query(`GRANT ALL ON bigtxn.* TO '${APP_USER}'@'%'`)
  const r = yield* bigTxn(db.port)
  process.stderr.write(`alone: ${JSON.stringify(r)}\n`)
  if (r.error !== undefined) return yield* Effect.die(new Error(`the large transaction failed on a lone server: ${r.error.message}`))
  return r
})

const cluster = Effect.gen(function*() {
  const nodeArgs = process.env.BENCH_AGENT_NODE_ARGS?.split(" ").filter((a) => a !== "")
  const c = yield* LocalCluster.make({
    nodes: 3,
    database: true,
    ...(process.env.BENCH_DIR !== undefined ? { dir: process.env.BENCH_DIR } : {}),
    ...(nodeArgs !== undefined ? { nodeArgs } : {})
  })
  const master = yield* waitForMaster(c, "a first master")
  yield* createAppUser(master)
  yield* Effect.scoped(Effect.flatMap(connect(master.rwPort!), (conn) => Effect.forEach(bigTxnSchema("bigtxn"), (s) => sql(conn, s))))
  const agents = c.nodes.map((n) => n.pid()!)
  const peaks = agents.map(() => 0)
  const samples: Array<{ readonly at: number; readonly rss: ReadonlyArray<number> }> = []
  const sampler = setInterval(() => {
    const rss = agents.map(rssMb)
    samples.push({ at: performance.now(), rss })
    rss.forEach((r, i) => (peaks[i] = Math.max(peaks[i]!, r)))
  }, 50)
  const r = yield* bigTxn(master.rwPort!)
  process.stderr.write(`cluster: ${JSON.stringify(r)}\n`)
  for (const n of c.nodes) {
    const s = yield* statusOf(n)
    if (!("error" in s)) process.stderr.write(`cluster: node ${n.nodeId} memory after the commit ${JSON.stringify(s.memory)}\n`)
    if (!("error" in s)) process.stderr.write(`cluster: node ${n.nodeId} paxos write ${JSON.stringify(s.paxos.writeMs)} round ${JSON.stringify(s.paxos.roundMs)}\n`)
  }
  if (r.error !== undefined) {
    clearInterval(sampler)
    return yield* Effect.die(new Error(`the large transaction failed through the cluster: ${r.error.message}`))
  }
  const t0 = performance.now()
  yield* LocalCluster.waitFor(
    "every database to hold the whole transaction",
    Effect.map(
      Effect.forEach(c.nodes, (n) => adminQuery<{ n: unknown }>(n, "SELECT COUNT(*) AS n FROM bigtxn.big")),
      (counts) => counts.every((x) => Number(x[0]?.n) === rows)
    ),
    120_000
  )
  clearInterval(sampler)
  process.stderr.write(`cluster: every replica had it ${Math.round(performance.now() - t0)} ms after the commit\n`)
  const peakIn = (from: number, to: number) =>
    agents.map((_, i) => Math.round(Math.max(0, ...samples.filter((x) => x.at >= from && x.at < to).map((x) => x.rss[i]!))))
  process.stderr.write(
    `cluster: agents' RSS (MB) before ${peakIn(0, r.startedAt)}, peak during the inserts ${peakIn(r.startedAt, r.commitAt)}, during the commit ${
      peakIn(r.commitAt, Infinity)
    }\n`
  )
  process.stderr.write(`cluster: agents' peak RSS (MB) ${c.nodes.map((n, i) => `node ${n.nodeId}${n.nodeId === master.nodeId ? " (master)" : ""} ${Math.round(peaks[i]!)}`).join(", ")}\n`)
  return { ...r, agentPeakRssMb: Math.max(...peaks) }
})

const program = Effect.gen(function*() {
  const a = yield* Effect.scoped(alone)
  const c = yield* Effect.scoped(cluster)
  console.log(JSON.stringify({
    bench: "bigtxn",
    sizeMb: round((rows * rowBytes) / (1024 * 1024)),
    aloneMs: Math.round(a.ms),
    clusterMs: Math.round(c.ms),
    vsAlone: Math.round((c.ms / a.ms) * 100) / 100,
    smallCommitsDuring: c.smallCommitsDuring,
    smallCommitMaxMs: Math.round(c.smallCommitMaxMs),
    agentPeakRssMb: Math.round(c.agentPeakRssMb)
  }))
})

NodeRuntime.runMain(program)
