/**
 * Binlog benchmark. capture: 8 writers commit single-row write transactions on a real
 * semi-sync master (AFTER_SYNC) while the capture client ACKs each transaction on receipt;
 * transactions captured per second. serve: the captured transactions are streamed by the
 * binlog server to a real replica; transactions applied per second from START SLAVE until
 * it has all of them. Prints one JSON line:
 * {"bench":"binlog","captureTxnPerSec":N,"serveTxnPerSec":N}. Env: BENCH_SECONDS, BENCH_WRITERS.
 */
import { NodeRuntime } from "@effect/platform-node"
import { Effect, Queue, Ref, Stream } from "effect"
import * as BinlogCapture from "../src/services/binlog/BinlogCapture.js"
import * as BinlogServer from "../src/services/binlog/BinlogServer.js"
import * as BinlogSource from "../src/services/binlog/BinlogSource.js"
import { MariaDbInstance } from "../test/support/MariaDbInstance.js"
import {
  createReplicationUser,
  enableSemiSync,
  gtidBinlogPos,
  gtidSlavePos,
  REPL_PASSWORD,
  REPL_USER,
  replicaConfig,
  startReplication,
  waitForReplica
} from "../test/support/replication.js"

const seconds = Number(process.env.BENCH_SECONDS ?? 10)
const writers = Number(process.env.BENCH_WRITERS ?? 8)

const program = Effect.gen(function*() {
  const a = yield* MariaDbInstance.make({ serverId: 1, extraConfig: { max_allowed_packet: "64M" } })
  yield* createReplicationUser(a)
  yield* a.query("CREATE DATABASE sb")
  yield* a.query("CREATE TABLE sb.t (id INT PRIMARY KEY, k INT NOT NULL, c CHAR(120) NOT NULL, pad CHAR(60) NOT NULL)")
  yield* enableSemiSync(a)

  const capture = yield* BinlogCapture.make({ host: a.host, port: a.port, user: REPL_USER, password: REPL_PASSWORD, serverId: 1001, startAfter: null })
  const captured = yield* Queue.unbounded<BinlogCapture.CapturedTxn>()
  const count = yield* Ref.make(0)
  // ACK on receipt (the bare acker of docs/mariadb.md), keeping the transactions for the serve phase.
  yield* Effect.forkScoped(capture.transactions.pipe(Stream.runForEach((t) =>
    Effect.andThen(capture.ack(t.file, t.endPos), Effect.andThen(Ref.update(count, (n) => n + 1), Queue.offer(captured, t)))
  )))
  const fde = yield* capture.formatDescription

  // capture: sysbench-like single-row writes (insert, then updates of random rows).
  const c = "x".repeat(120)
  const pad = "y".repeat(60)
  let nextId = 0
  const deadline = performance.now() + seconds * 1000
  const before = yield* Ref.get(count)
  const t0 = performance.now()
  yield* Effect.forEach(Array.from({ length: writers }), () =>
    Effect.gen(function*() {
      while (performance.now() < deadline) {
        const id = nextId++
        if (id % 2 === 0 || id < 1000) {
          yield* a.query("INSERT INTO sb.t (id, k, c, pad) VALUES (?, ?, ?, ?)", [id, id % 1000, c, pad])
        } else {
          yield* a.query("UPDATE sb.t SET k = k + 1 WHERE id = ?", [Math.floor(Math.random() * 1000)])
        }
      }
    }), { concurrency: "unbounded", discard: true })
  const elapsed = (performance.now() - t0) / 1000
  const capturedCount = (yield* Ref.get(count)) - before
  const captureTxnPerSec = Math.round(capturedCount / elapsed)
  process.stderr.write(`capture: ${capturedCount} transactions in ${elapsed.toFixed(1)} s\n`)

  // serve: everything captured, streamed to a fresh replica.
  const { source, append } = yield* BinlogSource.makeInMemory(fde)
  const all = yield* Queue.takeAll(captured)
  for (const t of all) yield* append({ gtid: t.gtid, events: t.events })
  const server = yield* BinlogServer.make({ host: "127.0.0.1", port: 0, serverId: 1000, user: REPL_USER, password: REPL_PASSWORD }).pipe(
    Effect.provideService(BinlogSource.BinlogSource, source)
  )
  const b = yield* MariaDbInstance.make({ serverId: 2, extraConfig: replicaConfig })
  const last = yield* gtidBinlogPos(a)
  const s0 = performance.now()
  yield* startReplication(b, server.address)
  yield* waitForReplica(b, `the replica to reach ${last}`, Effect.map(gtidSlavePos(b), (p) => p === last), 600_000)
  const serveTxnPerSec = Math.round(all.length / ((performance.now() - s0) / 1000))
  process.stderr.write(`serve: ${all.length} transactions applied by the replica\n`)
  console.log(JSON.stringify({ bench: "binlog", captureTxnPerSec, serveTxnPerSec }))
})

NodeRuntime.runMain(Effect.scoped(program))
