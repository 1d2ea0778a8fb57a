import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber, Schedule, Stream } from "effect"
import mysql from "mysql2/promise"
import { formatGtid } from "../src/domain/cluster/gtid.js"
import * as BinlogCapture from "../src/services/binlog/BinlogCapture.js"
import { MariaDbInstance, type MariaDbInstanceInfo } from "./support/MariaDbInstance.js"
import { createReplicationUser, gtidBinlogPos, REPL_PASSWORD, REPL_USER, semiSyncMasterConfig } from "./support/replication.js"

const CAPTURE_SERVER_ID = 1000

/** Polls `cond` until it holds (bounded). */
const waitUntil = (what: string, cond: Effect.Effect<boolean, unknown>, timeoutMs = 20_000) =>
  cond.pipe(
    Effect.repeat({ schedule: Schedule.spaced("20 millis"), until: (ok) => ok }),
    Effect.timeoutOrElse({ duration: `${timeoutMs} millis`, orElse: () => Effect.fail(new Error(`timed out waiting for ${what}`)) })
  )

const sync = <A>(f: () => A) => Effect.sync(f)

/**
 * A semi-sync master (user created without a GTID, so nothing waits yet) and a capture
 * client consumed by a fiber that records every transaction and ACKs it while `autoAck`.
 */
const setup = (options: { readonly reconnect?: BinlogCapture.CaptureOptions["reconnect"] } = {}) =>
  Effect.gen(function*() {
    const master = yield* MariaDbInstance.make({ serverId: 1, extraConfig: semiSyncMasterConfig })
    yield* createReplicationUser(master)
    const capture = yield* BinlogCapture.make({
      host: master.host,
      port: master.port,
      user: REPL_USER,
      password: REPL_PASSWORD,
      serverId: CAPTURE_SERVER_ID,
      startAfter: null,
      heartbeatMs: 200,
      reconnect: options.reconnect
    })
    const got: Array<BinlogCapture.CapturedTxn> = []
    const ctl = { autoAck: true }
    const consumer = yield* capture.transactions.pipe(
      Stream.runForEach((txn) =>
        Effect.gen(function*() {
          got.push(txn)
          if (ctl.autoAck) yield* capture.ack(txn.file, txn.endPos)
        })
      ),
      Effect.forkScoped
    )
    // Teardown: ACK everything received so no commit hangs the server's shutdown.
    yield* Effect.addFinalizer(() =>
      Effect.suspend(() => {
        const lastTxn = got[got.length - 1]
        return lastTxn === undefined ? Effect.void : capture.ack(lastTxn.file, lastTxn.endPos)
      })
    )
    const waitForTxns = (n: number) => waitUntil(`${n} transactions`, sync(() => got.length >= n))
    const seqs = () => got.map((t) => t.gtid.seq)
    return { master, capture, got, ctl, consumer, waitForTxns, seqs }
  })

/** Sessions on the master waiting in the semi-sync commit hook. */
const waitingCommits = (master: MariaDbInstanceInfo) =>
  Effect.map(
    master.query<{ n: number }>(
      "SELECT COUNT(*) AS n FROM information_schema.processlist WHERE state LIKE '%semi-sync%' AND command <> 'Binlog Dump'"
    ),
    (rows) => Number(rows[0]?.n ?? 0)
  )

const dumpThreads = (master: MariaDbInstanceInfo) =>
  Effect.map(
    master.query<{ id: number }>("SELECT id FROM information_schema.processlist WHERE command = 'Binlog Dump'"),
    (rows) => rows.map((r) => Number(r.id))
  )

/** Event type byte of each event (header offset 4). */
const types = (txn: BinlogCapture.CapturedTxn) => txn.events.map((e) => e[4])
const WRITE_ROWS = new Set([23, 30])
const XID = 16

describe("binlog capture (semi-sync replica client)", () => {
  it.live("holds a commit until it is ACKed; an ACK of a later position releases earlier waiters", () =>
    Effect.gen(function*() {
      const { master, capture, got, ctl, waitForTxns } = yield* setup()
      yield* master.query("CREATE DATABASE t")
      yield* master.query("CREATE TABLE t.kv (k INT PRIMARY KEY, v VARCHAR(64))")
      yield* waitForTxns(2)
      expect((yield* capture.formatDescription)[4]).toBe(15)

      // One commit: blocks while its transaction is un-ACKed.
      ctl.autoAck = false
      const insert = yield* Effect.forkChild(master.query("INSERT INTO t.kv VALUES (1, 'a')"))
      yield* waitForTxns(3)
      const txn = got[2]!
      expect(txn.needAck).toBe(true)
      expect(txn.gtid).toEqual({ domain: 0, server: 1, seq: 3 })
      yield* waitUntil("the commit waits for the ACK", Effect.map(waitingCommits(master), (n) => n === 1))
      expect(insert.pollUnsafe()).toBeUndefined()
      yield* capture.ack(txn.file, txn.endPos)
      yield* Fiber.join(insert).pipe(Effect.timeout("5 seconds"))
      expect(yield* waitingCommits(master)).toBe(0)

      // Two concurrent commits: ACK only the later one.
      const a = yield* Effect.forkChild(master.query("INSERT INTO t.kv VALUES (2, 'b')"))
      const b = yield* Effect.forkChild(master.query("INSERT INTO t.kv VALUES (3, 'c')"))
      yield* waitForTxns(5)
      yield* waitUntil("the commits wait", Effect.map(waitingCommits(master), (n) => n >= 1))
      expect(a.pollUnsafe()).toBeUndefined()
      expect(b.pollUnsafe()).toBeUndefined()
      const later = got[4]!
      expect(later.endPos).toBeGreaterThan(got[3]!.endPos)
      expect(got.slice(3).every((t) => t.needAck)).toBe(true)
      yield* capture.ack(later.file, later.endPos)
      yield* Fiber.join(a).pipe(Effect.timeout("5 seconds"))
      yield* Fiber.join(b).pipe(Effect.timeout("5 seconds"))
      ctl.autoAck = true
      const rows = yield* master.query<{ n: number }>("SELECT COUNT(*) AS n FROM t.kv")
      expect(Number(rows[0]!.n)).toBe(3)
    }))

  it.live("transaction boundaries and GTIDs: DML, a multi-statement transaction, DDL, a transaction over 16 MiB", () =>
    Effect.gen(function*() {
      const { master, got, waitForTxns, seqs } = yield* setup()
      const conn = yield* Effect.acquireRelease(
        Effect.promise(() => mysql.createConnection({ socketPath: master.socket, user: master.user })),
        (c) => Effect.promise(() => c.end().catch(() => undefined))
      )
      const q = (sql: string, params?: ReadonlyArray<unknown>) =>
        Effect.promise(() => conn.query(sql, params === undefined ? undefined : [...params]))
      yield* q("CREATE DATABASE t") // 1: DDL
      yield* q("CREATE TABLE t.kv (k INT PRIMARY KEY, v VARCHAR(64))") // 2: DDL
      yield* q("INSERT INTO t.kv VALUES (1, 'a')") // 3: single-row DML
      yield* q("BEGIN") // 4: three inserts in one transaction
      yield* q("INSERT INTO t.kv VALUES (2, 'b')")
      yield* q("INSERT INTO t.kv VALUES (3, 'c')")
      yield* q("INSERT INTO t.kv VALUES (4, 'd')")
      yield* q("COMMIT")
      yield* q("UPDATE t.kv SET v = 'z' WHERE k = 1") // 5
      yield* q("CREATE TABLE t.big (id INT PRIMARY KEY, b LONGBLOB)") // 6
      const blob = Buffer.alloc(20 * 1024 * 1024, 0x5a)
      yield* q("INSERT INTO t.big VALUES (1, ?)", [blob]) // 7: > 16 MiB
      yield* q("DELETE FROM t.kv WHERE k = 4") // 8
      yield* waitForTxns(8)

      const pos = yield* gtidBinlogPos(master)
      expect(got).toHaveLength(8)
      expect(seqs()).toEqual([1, 2, 3, 4, 5, 6, 7, 8])
      expect(formatGtid(got[7]!.gtid)).toBe(pos)
      for (const t of got) {
        expect(types(t)[0]).toBe(162) // Gtid event first
        expect(t.file).toMatch(/^bin\.\d+$/)
      }
      // DDL: Gtid + Query
      expect(types(got[0]!)).toEqual([162, 2])
      expect(types(got[5]!)).toEqual([162, 2])
      // The multi-statement transaction: three row events, one Xid at the end.
      const multi = types(got[3]!)
      expect(multi.filter((x) => WRITE_ROWS.has(x!))).toHaveLength(3)
      expect(multi[multi.length - 1]).toBe(XID)
      expect(types(got[2]!).filter((x) => WRITE_ROWS.has(x!))).toHaveLength(1)
      // The big one arrives whole.
      const bigBytes = got[6]!.events.reduce((n, e) => n + e.length, 0)
      expect(bigBytes).toBeGreaterThan(20 * 1024 * 1024)
      // End positions grow and the last matches the master's binlog.
      for (let i = 1; i < got.length; i++) expect(got[i]!.endPos).toBeGreaterThan(got[i - 1]!.endPos)
      const status = yield* master.query<{ File: string; Position: number }>("SHOW MASTER STATUS")
      expect(got[7]!.file).toBe(status[0]!.File)
      expect(got[7]!.endPos).toBe(Number(status[0]!.Position))
    }))

  it.live("reconnects after its connection is killed: no gap, no duplicate, held commits released", () =>
    Effect.gen(function*() {
      const { master, capture, got, ctl, waitForTxns, seqs } = yield* setup()
      yield* master.query("CREATE DATABASE t")
      yield* master.query("CREATE TABLE t.kv (k INT PRIMARY KEY, v INT)")
      for (let i = 1; i <= 5; i++) yield* master.query("INSERT INTO t.kv VALUES (?, 0)", [i])
      yield* waitForTxns(7)

      // A commit whose transaction was handed out but not ACKed when the connection dies:
      // the ACK given while (or just after) disconnected still releases it.
      ctl.autoAck = false
      const held = yield* Effect.forkChild(master.query("INSERT INTO t.kv VALUES (100, 0)"))
      yield* waitForTxns(8)
      const [first] = yield* dumpThreads(master)
      expect(first).toBeDefined()
      yield* master.query(`KILL ${first}`)
      const heldTxn = got[7]!
      yield* capture.ack(heldTxn.file, heldTxn.endPos)
      yield* Fiber.join(held).pipe(Effect.timeout("10 seconds"))

      // The same once the new connection is up: the master takes an ACK for a transaction
      // it sent on the previous connection.
      const held2 = yield* Effect.forkChild(master.query("INSERT INTO t.kv VALUES (101, 0)"))
      yield* waitForTxns(9)
      const [second] = yield* dumpThreads(master)
      yield* master.query(`KILL ${second}`)
      yield* waitUntil(
        "a new dump connection",
        Effect.map(dumpThreads(master), (ids) => ids.length === 1 && ids[0] !== second)
      )
      expect(held2.pollUnsafe()).toBeUndefined()
      yield* capture.ack(got[8]!.file, got[8]!.endPos)
      yield* Fiber.join(held2).pipe(Effect.timeout("10 seconds"))
      ctl.autoAck = true

      // Keep committing from 4 writers while the dump connection is killed twice more.
      const writers = yield* Effect.forkChild(
        Effect.forEach(
          [0, 1, 2, 3],
          (w) =>
            Effect.forEach(
              Array.from({ length: 30 }, (_, i) => 1000 + w * 100 + i),
              (k) => master.query("INSERT INTO t.kv VALUES (?, 1)", [k]),
              { discard: true }
            ),
          { concurrency: "unbounded", discard: true }
        )
      )
      for (let kill = 0; kill < 2; kill++) {
        const before = got.length
        yield* waitUntil("progress before the kill", sync(() => got.length >= before + 10))
        const ids = yield* dumpThreads(master)
        for (const id of ids) yield* master.query(`KILL ${id}`).pipe(Effect.ignore)
      }
      yield* Fiber.join(writers).pipe(Effect.timeout("30 seconds"))
      const total = 7 + 2 + 120
      yield* waitForTxns(total)
      expect(seqs()).toEqual(Array.from({ length: total }, (_, i) => i + 1))
      expect(formatGtid(got[total - 1]!.gtid)).toBe(yield* gtidBinlogPos(master))
      const [after] = yield* dumpThreads(master)
      expect(after).toBeDefined()
      expect(after).not.toBe(first)
      expect(yield* waitingCommits(master)).toBe(0)
    }))

  it.live("fails the stream when the master cannot serve the position; refuses a bad login", () =>
    Effect.gen(function*() {
      const master = yield* MariaDbInstance.make({ serverId: 1, extraConfig: semiSyncMasterConfig })
      yield* createReplicationUser(master)
      // A few transactions without semi-sync (nothing ACKs them here).
      yield* master.query("SET GLOBAL rpl_semi_sync_master_enabled = OFF")
      yield* master.query("CREATE DATABASE t")
      yield* master.query("CREATE TABLE t.kv (k INT PRIMARY KEY)")
      yield* master.query("SET GLOBAL rpl_semi_sync_master_enabled = ON")
      const base = {
        host: master.host,
        port: master.port,
        user: REPL_USER,
        password: REPL_PASSWORD,
        serverId: CAPTURE_SERVER_ID,
        heartbeatMs: 200
      }
      const ahead = yield* BinlogCapture.make({ ...base, startAfter: { domain: 0, server: 1, seq: 50 } })
      const e1 = yield* Stream.runDrain(ahead.transactions).pipe(Effect.flip, Effect.timeout("10 seconds"))
      expect(e1._tag).toBe("CapturePositionError")
      expect(e1.message).toContain("0-1-50")

      const wrong = yield* BinlogCapture.make({ ...base, password: "nope", startAfter: null })
      const e2 = yield* Stream.runDrain(wrong.transactions).pipe(Effect.flip, Effect.timeout("10 seconds"))
      expect(e2._tag).toBe("CaptureAuthError")
    }))
})
