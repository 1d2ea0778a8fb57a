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
import { Effect } from "effect"
import { request } from "node:http"
import * as LocalCluster from "../src/testing/LocalCluster.js"
import { checksum, createAppUser, statusOf, waitForMaster } from "../test/support/dbCluster.js"
import { loadMegabytes } from "./support/load.js"

const dataMb = Number(process.env.BENCH_DATA_MB ?? 1024)
const round = (x: number) => Math.round(x * 10) / 10

/** POST /rebuild, with the cluster's admin token (every change needs it). */
const postRebuild = (host: string, port: number, token: string) =>
  Effect.promise(() =>
    new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = request({ host, port, path: "/rebuild", method: "POST", headers: { authorization: `Bearer ${token}` } }, (res) => {
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
  const { innodbMb, master: current } = yield* loadMegabytes(c, dataMb, "rebuild")
  const replica = c.nodes.find((n) => n !== current)!
  const start = performance.now()
  const asked = yield* postRebuild(replica.host, replica.adminPort, c.adminToken)
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
