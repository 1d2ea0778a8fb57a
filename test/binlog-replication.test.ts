import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber, Queue, Stream } from "effect"
import { parseGtid } from "../src/domain/cluster/gtid.js"
import * as BinlogCapture from "../src/services/binlog/BinlogCapture.js"
import * as BinlogServer from "../src/services/binlog/BinlogServer.js"
import * as BinlogSource from "../src/services/binlog/BinlogSource.js"
import { MariaDbInstance } from "./support/MariaDbInstance.js"
import {
  checksums,
  createReplicationUser,
  enableSemiSync,
  gtidBinlogPos,
  gtidSlavePos,
  mixedWorkload,
  REPL_PASSWORD,
  REPL_USER,
  replicaConfig,
  startReplication,
  waitForReplica
} from "./support/replication.js"

const TXNS = Number(process.env.BINLOG_E2E_TXNS ?? 10_000)
const seqOf = (pos: string) => parseGtid(pos.split(",")[0] ?? "")?.seq ?? 0

/**
 * The replication protocol end to end: server A (a semi-sync master) -> capture client ->
 * a transaction store -> binlog server -> a real replica B, which is SIGKILLed mid-stream.
 */
describe("capture client and binlog server with real servers", () => {
  it.live(`${TXNS} mixed transactions reach a replica intact, through a SIGKILL of the replica`, () =>
    Effect.gen(function*() {
      const a = yield* MariaDbInstance.make({ serverId: 1, extraConfig: { max_allowed_packet: "64M" } })
      const b = yield* MariaDbInstance.make({ serverId: 2, extraConfig: replicaConfig })
      yield* createReplicationUser(a)
      // Lossless semi-sync on A from now on: every commit waits for the capture client's ACK.
      yield* enableSemiSync(a)

      const capture = yield* BinlogCapture.make({
        host: a.host,
        port: a.port,
        user: REPL_USER,
        password: REPL_PASSWORD,
        serverId: 1001,
        startAfter: null
      })
      // Captured transactions wait here until the store exists (it needs A's FDE first).
      const captured = yield* Queue.unbounded<BinlogCapture.CapturedTxn>()
      yield* Effect.forkScoped(capture.transactions.pipe(Stream.runForEach((t) => Queue.offer(captured, t))))
      const fde = yield* capture.formatDescription
      const { source, append } = yield* BinlogSource.makeInMemory(fde)
      // Stored first, ACKed after: the commit on A returns only once the replica side can serve it.
      yield* Effect.forkScoped(Effect.forever(Effect.gen(function*() {
        const t = yield* Queue.take(captured)
        yield* append({ gtid: t.gtid, events: t.events })
        yield* capture.ack(t.file, t.endPos)
      })))

      const server = yield* BinlogServer.make({ host: "127.0.0.1", port: 0, serverId: 1000, user: REPL_USER, password: REPL_PASSWORD }).pipe(
        Effect.provideService(BinlogSource.BinlogSource, source)
      )
      yield* startReplication(b, server.address)

      const workload = yield* Effect.forkChild(mixedWorkload(a, TXNS))
      // Kill B mid-stream, let A go on, restart B: it must resume with no gap and no duplicate.
      yield* waitForReplica(b, "the replica to apply a third", Effect.map(gtidSlavePos(b), (p) => seqOf(p) >= TXNS / 3), 120_000)
      yield* b.kill
      const killedAt = seqOf(yield* gtidBinlogPos(a))
      yield* waitForReplica(a, "the master to go on without the replica", Effect.map(gtidBinlogPos(a), (p) => seqOf(p) >= killedAt + TXNS / 10), 120_000)
      yield* b.start
      yield* b.query("START SLAVE")
      yield* Fiber.join(workload)

      const last = yield* gtidBinlogPos(a)
      expect(seqOf(last)).toBe(TXNS)
      yield* waitForReplica(b, `the replica to reach ${last}`, Effect.map(gtidSlavePos(b), (p) => p === last), 120_000)
      const [status] = yield* b.query<{ Last_SQL_Errno: number; Last_IO_Errno: number }>("SHOW SLAVE STATUS")
      expect(status).toMatchObject({ Last_SQL_Errno: 0, Last_IO_Errno: 0 })
      expect(yield* checksums(b)).toEqual(yield* checksums(a))
    }), { timeout: 300_000 })
})
