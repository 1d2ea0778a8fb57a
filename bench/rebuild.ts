/**
 * Rebuild benchmark: a 3-node cluster loaded with about BENCH_DATA_MB (1024) MB of InnoDB
 * data through the RW port (rows of 1 MiB made by the server itself, INSERT ... SELECT
 * from the sequence engine, 8 rows a transaction: no client bytes to send), then one
 * replica rebuilt on request (POST /rebuild): a mariadb-backup copy from a healthy peer,
 * streamed agent to agent, prepared, swapped in, caught up. Prints one JSON line:
 * {"bench":"rebuild","dataMb":N,"rebuildMs":N,"mbPerSec":N}
 * dataMb: the table's InnoDB size on the master (data_length + index_length, after ANALYZE);
 * rebuildMs: from the request until the node serves reads again (role replica, lag 0,
 * no rebuild under way); mbPerSec: dataMb per second of that. The node's own account of
 * the copy (MB copied, ms) goes to stderr, and its CHECKSUM TABLE is compared with the
 * master's after the clock stops.
 * Env: BENCH_DATA_MB (1024).
 */
import { NodeRuntime } from "@effect/platform-node"
import { Effect, Schedule } from "effect"
import { request } from "node:http"
import * as LocalCluster from "../src/testing/LocalCluster.js"
import { adminQuery, checksum, connect, createAppUser, run, statusOf, waitConverged, waitForMaster } from "../test/support/dbCluster.js"

const dataMb = Number(process.env.BENCH_DATA_MB ?? 1024)
const ROWS_PER_TXN = 8
const round = (x: number) => Math.round(x * 10) / 10

const postRebuild = (host: string, port: number) =>
  Effect.promise(() =>
    new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = request({ host, port, path: "/rebuild", method: "POST" }, (res) => {
        let body = ""
        res.on("data", (d) => (body += String(d)))
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body }))
      })
      req.on("error", reject)
      req.end()
    })
  )

const program = Effect.scoped(Effect.gen(function*() {
  const c = yield* LocalCluster.make({ nodes: 3, database: true, ...(process.env.BENCH_DIR ? { dir: process.env.BENCH_DIR } : {}) })
  const master = yield* waitForMaster(c, "a first master")
  yield* createAppUser(master)
  yield* Effect.scoped(Effect.flatMap(connect(master.rwPort!), (conn) =>
    Effect.andThen(run(conn, "CREATE DATABASE IF NOT EXISTS rb"), run(conn, "CREATE TABLE rb.t (id INT PRIMARY KEY, b LONGBLOB)"))))
  const loadStart = performance.now()
  // REPLACE: a batch whose answer was lost (a master switch under the load) is simply done
  // again, on a new connection to the same RW port (it reaches whoever is master).
  let failovers = 0
  for (let first = 0; first < dataMb; first += ROWS_PER_TXN) {
    const batch = Effect.scoped(Effect.flatMap(connect(master.rwPort!), (conn) =>
      run(conn, `REPLACE INTO rb.t SELECT seq + ${first}, REPEAT(CHAR(97 + seq % 26), 1048576) FROM rb.seq_1_to_${Math.min(ROWS_PER_TXN, dataMb - first)}`)))
    yield* batch.pipe(
      Effect.tapError((e) => Effect.sync(() => {
        failovers++
        process.stderr.write(`rebuild: load batch at ${first} failed (${e.message}); again\n`)
      })),
      Effect.retry({ schedule: Schedule.spaced("500 millis"), times: 60 })
    )
    if (first % 128 === 0) process.stderr.write(`rebuild: loaded ${first} MB\n`)
  }
  if (failovers > 0) process.stderr.write(`rebuild: ${failovers} load batches were retried (the master moved under the load)\n`)
  process.stderr.write(`rebuild: loaded ${dataMb} rows of 1 MiB in ${Math.round(performance.now() - loadStart)} ms\n`)
  // Every node healthy again (a node the load's master switch left diverged rebuilds itself first).
  const healthy = Effect.map(Effect.forEach(c.nodes, statusOf), (ss) =>
    ss.every((s) => !("error" in s) && s.database?.diverged === null && s.database.rebuild == null && (s.database.role === "master" || s.database.role === "replica")))
  yield* LocalCluster.waitFor("every node to be healthy", healthy, 600_000)
  yield* waitConverged(c, 600_000)
  const current = yield* waitForMaster(c, "the master after the load")
  yield* adminQuery(current, "ANALYZE TABLE rb.t")
  const [size] = yield* adminQuery<{ bytes: number | string }>(
    current,
    "SELECT data_length + index_length AS bytes FROM information_schema.tables WHERE table_schema = 'rb' AND table_name = 't'"
  )
  const innodbMb = Number(size?.bytes ?? 0) / 1024 / 1024
  const replica = c.nodes.find((n) => n !== current)!
  const start = performance.now()
  const asked = yield* postRebuild(replica.host, replica.adminPort)
  if (asked.status !== 202) return yield* Effect.die(new Error(`the rebuild was refused: ${asked.status} ${asked.body}`))
  // Its rebuild begins (the role leaves replica), then it serves reads again.
  yield* LocalCluster.waitFor("the rebuild to begin", Effect.map(statusOf(replica), (s) => "error" in s || s.database?.role !== "replica"), 30_000)
  yield* LocalCluster.waitFor("the rebuilt node to serve reads", Effect.map(statusOf(replica), (s) =>
    !("error" in s) && s.database?.role === "replica" && s.database.lag === 0 && s.database.rebuild == null), 600_000)
  const rebuildMs = performance.now() - start
  process.stderr.write(`rebuild: ${replica.output().split("\n").filter((l) => l.includes("rebuild")).slice(-4).join("\n")}\n`)
  const [a, b] = [yield* checksum(current, "rb.t"), yield* checksum(replica, "rb.t")]
  if (a !== b) return yield* Effect.die(new Error(`the rebuilt node's table differs: ${b} against ${a}`))
  console.log(JSON.stringify({ bench: "rebuild", dataMb: round(innodbMb), rebuildMs: Math.round(rebuildMs), mbPerSec: round(innodbMb / (rebuildMs / 1000)) }))
}))

NodeRuntime.runMain(program)
