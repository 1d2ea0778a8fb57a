import { describe, expect, it } from "@effect/vitest"
import { Effect, Result } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import mysql from "mysql2/promise"
import { crc32, crc32Patched } from "../src/domain/binlog/crc32.js"
import {
  type BinlogEvent,
  buildEvent,
  decodeBinlogCheckpoint,
  decodeFormatDescription,
  decodeGtid,
  decodeGtidList,
  decodeHeartbeat,
  decodeQuery,
  decodeRotate,
  decodeXid,
  EventFlag,
  EventType,
  eventTypeName,
  GtidFlag,
  makeFakeRotate,
  makeGtidList,
  makeHeartbeat,
  parseEvent,
  serializeEvent,
  statementKind,
  verifyChecksum,
  withLogPos
} from "../src/domain/binlog/event.js"
import { type BinlogFile, parseBinlogFile } from "../src/domain/binlog/file.js"
import { groupTransactions, type Transaction, TransactionAssembler } from "../src/domain/binlog/transaction.js"
import { MariaDbInstance } from "./support/MariaDbInstance.js"
import { ok } from "./support/result.js"
import { prng, randomBytes } from "./support/sim.js"

const errTag = <A, E>(r: Result.Result<A, E>): string | undefined =>
  Result.isFailure(r) ? (r.failure as { _tag: string })._tag : undefined

const decoders: ReadonlyArray<(e: BinlogEvent) => Result.Result<unknown, unknown>> = [
  decodeFormatDescription,
  decodeRotate,
  decodeGtid,
  decodeGtidList,
  decodeBinlogCheckpoint,
  decodeXid,
  decodeQuery,
  decodeHeartbeat
]
/** Runs everything on possibly garbage bytes; only checks that nothing throws and all answers are Results. */
const exercise = (bytes: Uint8Array) => {
  for (const checksum of [true, false]) {
    const r = parseEvent(bytes, { checksum, verify: false })
    expect(Result.isResult(r)).toBe(true)
    if (Result.isSuccess(r)) {
      for (const decode of decoders) expect(Result.isResult(decode(r.success))).toBe(true)
      expect(Result.isResult(verifyChecksum(r.success))).toBe(true)
    }
    expect(Result.isResult(withLogPos(bytes, 99, { checksum }))).toBe(true)
    expect(Result.isResult(new TransactionAssembler({ checksum }).push(bytes))).toBe(true)
  }
}

interface Captured {
  readonly serverId: number
  readonly files: ReadonlyArray<{ readonly name: string; readonly bytes: Uint8Array; readonly parsed: BinlogFile }>
  readonly gtidBinlogPos: string
  /** BINLOG_GTID_POS(file, endLogPos) for each transaction, in order. */
  readonly transactions: ReadonlyArray<{ readonly file: string; readonly txn: Transaction; readonly serverPos: string }>
}

const EXPECTED_KINDS = [
  "standalone", // CREATE DATABASE
  "standalone", // CREATE TABLE
  "xid", // INSERT
  "xid", // UPDATE
  "xid", // DELETE
  "xid", // BEGIN; 3 INSERTs; COMMIT
  "xid", // LONGBLOB row > 1 MiB
  "xa-prepare", // XA START .. XA PREPARE
  "standalone", // XA COMMIT (FL_STANDALONE | FL_COMPLETED_XA)
  "standalone", // CREATE TABLE ... ENGINE=MyISAM
  "commit-query", // INSERT into MyISAM: ends with a COMMIT Query, no Xid
  "xid", // CREATE TABLE ... SELECT: FL_DDL but not standalone, ends with Xid
  "xid" // statement-format INSERT: Gtid, Query, Xid
]

const BIG = 1_200_000

/** Every binlog file of a server (base.000001, ...), parsed. */
const readBinlogFiles = (binlogBase: string) => {
  const dir = path.dirname(binlogBase)
  const base = path.basename(binlogBase)
  const names = fs.readdirSync(dir).filter((n) => new RegExp(`^${base}\\.\\d{6}$`).test(n)).sort()
  return names.map((name) => {
    const bytes = new Uint8Array(fs.readFileSync(path.join(dir, name)))
    return { name, bytes, parsed: ok(parseBinlogFile(bytes)) }
  })
}

/** Starts a server, runs the workload, flushes, and reads the binlog files back. */
const capture = Effect.gen(function*() {
  const db = yield* MariaDbInstance.make({ extraConfig: { max_allowed_packet: "64M" } })
  const conn = yield* Effect.acquireRelease(
    Effect.promise(() => mysql.createConnection({ socketPath: db.socket, user: db.user })),
    (c) => Effect.promise(() => c.end().catch(() => undefined))
  )
  const next = prng(7)
  const big = Buffer.from(randomBytes(next, BIG))
  const statements: ReadonlyArray<string | readonly [string, ReadonlyArray<unknown>]> = [
    "CREATE DATABASE d1",
    "CREATE TABLE d1.t (id INT PRIMARY KEY, v VARCHAR(20), b LONGBLOB) ENGINE=InnoDB",
    "INSERT INTO d1.t VALUES (1, 'a', NULL)",
    "UPDATE d1.t SET v = 'b' WHERE id = 1",
    "DELETE FROM d1.t WHERE id = 1",
    "BEGIN",
    "INSERT INTO d1.t VALUES (2, 'x', NULL)",
    "INSERT INTO d1.t VALUES (3, 'y', NULL)",
    "INSERT INTO d1.t VALUES (4, 'z', NULL)",
    "COMMIT",
    ["INSERT INTO d1.t VALUES (5, 'big', ?)", [big]],
    "XA START 'x1'",
    "INSERT INTO d1.t VALUES (6, 'xa', NULL)",
    "XA END 'x1'",
    "XA PREPARE 'x1'",
    "XA COMMIT 'x1'",
    "CREATE TABLE d1.m (id INT) ENGINE=MyISAM",
    "INSERT INTO d1.m VALUES (1)",
    "CREATE TABLE d1.c ENGINE=InnoDB SELECT id, v FROM d1.t WHERE id < 5",
    "SET STATEMENT binlog_format=STATEMENT FOR INSERT INTO d1.t VALUES (7, 'stmt', NULL)"
  ]
  for (const s of statements) {
    yield* Effect.promise(() => (typeof s === "string" ? conn.query(s) : conn.query(s[0], [...s[1]])))
  }
  const [{ pos }] = (yield* db.query<{ pos: string }>("SELECT @@gtid_binlog_pos AS pos")) as [{ pos: string }]
  yield* db.query("FLUSH BINARY LOGS")

  const files = readBinlogFiles(db.binlogBase)
  const transactions: Array<Captured["transactions"][number]> = []
  for (const f of files) {
    const out = ok(groupTransactions(f.parsed.events.map((e) => e.bytes), { checksum: f.parsed.checksum }))
    for (const o of out) {
      if (o._tag !== "Transaction") continue
      const [{ p }] = (yield* db.query<{ p: string }>("SELECT BINLOG_GTID_POS(?, ?) AS p", [f.name, o.endLogPos])) as [
        { p: string }
      ]
      transactions.push({ file: f.name, txn: o, serverPos: p })
    }
  }
  return { serverId: db.serverId, files, gtidBinlogPos: pos, transactions } satisfies Captured
})

describe("binlog codec on a real MariaDB 10.11 binlog", () => {
  it.effect("parses, round-trips, verifies and groups every event", () =>
    Effect.gen(function*() {
      const { files, gtidBinlogPos, serverId, transactions } = yield* capture
      expect(files.length).toBeGreaterThanOrEqual(2)

      // The FDE of the file being written has LOG_EVENT_BINLOG_IN_USE_F (its CRC is computed without it).
      expect(files[0]!.parsed.events[0]!.event.header.flags & EventFlag.BinlogInUse).toBe(0)
      expect(files[files.length - 1]!.parsed.events[0]!.event.header.flags & EventFlag.BinlogInUse).toBe(EventFlag.BinlogInUse)

      const seen = new Set<string>()
      for (const f of files) {
        expect(f.parsed.checksum).toBe(true)
        expect(f.parsed.truncatedTail).toBe(0)
        const fde = ok(decodeFormatDescription(f.parsed.events[0]!.event))
        expect(fde.serverVersion).toMatch(/^10\.11\./)
        expect(fde.binlogVersion).toBe(4)
        expect(fde.headerLength).toBe(19)
        let end = 4
        for (const { offset, bytes, event } of f.parsed.events) {
          seen.add(eventTypeName(event.header.type))
          expect(offset).toBe(end)
          end += bytes.length
          // log_pos is the end offset of the event in its file
          expect(event.header.logPos).toBe(end)
          expect(Buffer.from(serializeEvent(event)).equals(Buffer.from(bytes))).toBe(true)
          expect(Result.isSuccess(verifyChecksum(event))).toBe(true)

          const moved = ok(withLogPos(bytes, 123456))
          const reparsed = ok(parseEvent(moved, { checksum: true }))
          expect(reparsed.header).toEqual({ ...event.header, logPos: 123456 })
          expect(Buffer.from(reparsed.body).equals(Buffer.from(event.body))).toBe(true)
          expect(Buffer.from(ok(withLogPos(moved, event.header.logPos))).equals(Buffer.from(bytes))).toBe(true)
        }
        expect(end).toBe(f.bytes.length)
      }
      for (
        const name of [
          "FormatDescription",
          "GtidList",
          "BinlogCheckpoint",
          "Gtid",
          "Query",
          "AnnotateRows",
          "TableMap",
          "WriteRowsV1",
          "UpdateRowsV1",
          "DeleteRowsV1",
          "Xid",
          "XaPrepare",
          "Rotate"
        ]
      ) expect(seen).toContain(name)

      // The first file ends with a Rotate to the next one.
      const first = files[0]!.parsed.events
      const rotate = ok(decodeRotate(first[first.length - 1]!.event))
      expect(rotate).toEqual({ position: 4, fileName: files[1]!.name })
      const checkpoint = first.find((e) => e.event.header.type === EventType.BinlogCheckpoint)!
      expect(ok(decodeBinlogCheckpoint(checkpoint.event)).fileName).toBe(files[0]!.name)

      // Transactions: consecutive GTIDs ending at @@gtid_binlog_pos, each matching BINLOG_GTID_POS at its end.
      const gtids = transactions.map(({ txn }) => `${txn.gtid.domain}-${txn.gtid.server}-${txn.gtid.seq}`)
      expect(gtids).toEqual(EXPECTED_KINDS.map((_, i) => `0-${serverId}-${i + 1}`))
      expect(gtids[gtids.length - 1]).toBe(gtidBinlogPos)
      for (const t of transactions) expect(t.serverPos).toBe(`0-${serverId}-${t.txn.gtid.seq}`)
      expect(transactions.map((t) => t.txn.kind)).toEqual(EXPECTED_KINDS)

      // The next file's Gtid_list holds the last GTID.
      const list = files[1]!.parsed.events.find((e) => e.event.header.type === EventType.GtidList)!
      expect(ok(decodeGtidList(list.event))).toEqual({ flags: 0, gtids: [{ domain: 0, server: serverId, seq: gtids.length }] })

      // Kinds and flags in detail.
      const txn = (seq: number) => transactions[seq - 1]!.txn
      const gtidOf = (seq: number) => ok(decodeGtid(ok(parseEvent(txn(seq).events[0]!, { checksum: true }))))
      const lastQuery = (seq: number) => {
        const events = txn(seq).events
        return ok(decodeQuery(ok(parseEvent(events[events.length - 1]!, { checksum: true }))))
      }
      expect(gtidOf(1).flags & (GtidFlag.Standalone | GtidFlag.Ddl)).toBe(GtidFlag.Standalone | GtidFlag.Ddl)
      expect(txn(1).events).toHaveLength(2)
      expect(lastQuery(1).sql).toBe("CREATE DATABASE d1")
      expect(statementKind(lastQuery(1).sql)).toBe("other")
      expect(gtidOf(3).standalone).toBe(false)
      expect(gtidOf(12).flags & (GtidFlag.Standalone | GtidFlag.Ddl)).toBe(GtidFlag.Ddl)
      const types = (seq: number) => txn(seq).events.map((b) => b[4])
      expect(types(6).filter((t) => t === EventType.WriteRowsV1)).toHaveLength(3)
      const bigTxn = txn(7).events
      expect(Math.max(...bigTxn.map((b) => b.length))).toBeGreaterThan(BIG)
      const xid = ok(decodeXid(ok(parseEvent(bigTxn[bigTxn.length - 1]!, { checksum: true }))))
      expect(xid.xid).toBeGreaterThan(0n)
      const xa = gtidOf(8)
      expect(xa.flags & GtidFlag.PreparedXa).toBe(GtidFlag.PreparedXa)
      expect(Buffer.from(xa.xid!.gtrid).toString()).toBe("x1")
      expect(gtidOf(9).flags & (GtidFlag.Standalone | GtidFlag.CompletedXa)).toBe(GtidFlag.Standalone | GtidFlag.CompletedXa)
      expect(statementKind(lastQuery(9).sql)).toBe("xa-commit")
      expect(statementKind(lastQuery(11).sql)).toBe("commit")
      expect(types(13)).toEqual([EventType.Gtid, EventType.Query, EventType.Xid])
      expect(lastQuery(1).database).toBe("d1")

      // ----- fuzz on the real bytes -----
      const next = prng(42)
      const allEvents = files.flatMap((f) => f.parsed.events)
      const small = allEvents.filter((e) => e.bytes.length <= 4096)
      // truncation at every offset: always a typed error
      for (const { bytes } of small) {
        for (let n = 0; n < bytes.length; n++) {
          const cut = bytes.subarray(0, n)
          expect(errTag(parseEvent(cut, { checksum: true }))).toBe("BinlogEventError")
          exercise(cut)
        }
      }
      // bit flips: every byte of every small event, one random bit: a typed error (CRC32 catches all single-bit errors)
      for (const { bytes } of small) {
        for (let i = 0; i < bytes.length; i++) {
          const flipped = Uint8Array.from(bytes)
          const bit = 1 << Math.floor(next() * 8)
          flipped[i]! ^= bit
          // the one bit outside the CRC: the FDE's "in use" flag, which the server clears in place on close
          const inUseFlag = bytes[4] === EventType.FormatDescription && i === 17 && bit === EventFlag.BinlogInUse
          const r = parseEvent(flipped, { checksum: true })
          if (inUseFlag) expect(Result.isSuccess(r)).toBe(true)
          else {
            expect(["BinlogEventError", "BinlogChecksumError"]).toContain(errTag(r))
            expect(Result.isFailure(withLogPos(flipped, 4))).toBe(true)
          }
          exercise(flipped)
        }
      }
      // a file cut anywhere: a typed error, or a clean prefix when a truncated tail is allowed
      const file = files[0]!.bytes
      const cuts = [
        ...files[0]!.parsed.events.flatMap((e) => [e.offset - 1, e.offset, e.offset + 1, e.offset + 19]),
        ...Array.from({ length: 200 }, () => Math.floor(next() * file.length))
      ]
      for (const n of cuts) {
        const cut = file.subarray(0, Math.max(0, n))
        const strict = parseBinlogFile(cut)
        const lenient = parseBinlogFile(cut, { allowTruncatedTail: true })
        if (Result.isFailure(strict)) expect(strict.failure._tag).toBe("BinlogFileError")
        if (Result.isSuccess(lenient)) {
          const { events, truncatedTail } = lenient.success
          const last = events[events.length - 1]!
          expect(last.offset + last.bytes.length + truncatedTail).toBe(cut.length)
        } else {
          expect(lenient.failure._tag).toBe("BinlogFileError")
        }
      }
      // shuffled real events through the assembler: outputs or typed errors, never a throw
      for (let round = 0; round < 50; round++) {
        const assembler = new TransactionAssembler({ checksum: true })
        for (let k = 0; k < 40; k++) {
          const r = assembler.push(small[Math.floor(next() * small.length)]!.bytes)
          if (Result.isFailure(r)) expect(["BinlogEventError", "BinlogChecksumError", "TransactionSequenceError"]).toContain(r.failure._tag)
        }
      }
    }))

  it.effect("reads a binlog without checksums and with compressed events", () =>
    Effect.gen(function*() {
      const db = yield* MariaDbInstance.make({ extraConfig: { binlog_checksum: "NONE", log_bin_compress: "ON" } })
      yield* db.query("CREATE DATABASE d2")
      yield* db.query("CREATE TABLE d2.c (id INT PRIMARY KEY, b TEXT) ENGINE=InnoDB")
      yield* db.query("INSERT INTO d2.c VALUES (1, REPEAT('a', 2000)), (2, REPEAT('b', 2000))")
      yield* db.query("UPDATE d2.c SET b = REPEAT('c', 2000) WHERE id = 1")
      yield* db.query("DELETE FROM d2.c WHERE id = 2")
      const [{ pos }] = (yield* db.query<{ pos: string }>("SELECT @@gtid_binlog_pos AS pos")) as [{ pos: string }]
      yield* db.query("FLUSH BINARY LOGS")
      const files = readBinlogFiles(db.binlogBase)
      const seen = new Set<number>()
      const gtids: Array<string> = []
      for (const f of files) {
        expect(f.parsed.checksum).toBe(false)
        // the FDE still carries a valid CRC32 trailer; its last body byte says "off" for the rest
        expect(f.parsed.events[0]!.event.checksum).not.toBeNull()
        expect(ok(decodeFormatDescription(f.parsed.events[0]!.event)).checksumAlg).toBe(0)
        for (const { bytes, event } of f.parsed.events) {
          seen.add(event.header.type)
          if (event.header.type !== EventType.FormatDescription) expect(event.checksum).toBeNull()
          expect(Buffer.from(serializeEvent(event)).equals(Buffer.from(bytes))).toBe(true)
          const moved = ok(parseEvent(ok(withLogPos(bytes, 77, { checksum: false })), { checksum: false }))
          expect(moved.header.logPos).toBe(77)
        }
        for (const o of ok(groupTransactions(f.parsed.events.map((e) => e.bytes), { checksum: false }))) {
          if (o._tag === "Transaction") gtids.push(`${o.gtid.domain}-${o.gtid.server}-${o.gtid.seq}`)
        }
      }
      expect(gtids[gtids.length - 1]).toBe(pos)
      expect(gtids).toHaveLength(5)
      for (const t of [EventType.WriteRowsCompressedV1, EventType.UpdateRowsCompressedV1, EventType.DeleteRowsCompressedV1]) {
        expect(seen).toContain(t)
      }
    }))
})

describe("binlog codec units", () => {
  it("crc32: zlib's check value, and a CRC continued across pieces equals the whole one", () => {
    const check = new TextEncoder().encode("123456789")
    expect(crc32(check)).toBe(0xcbf43926)
    const next = prng(1)
    for (let i = 0; i < 50; i++) {
      const data = randomBytes(next, Math.floor(next() * 300))
      expect(crc32(data.subarray(7), crc32(data.subarray(0, 7)))).toBe(crc32(data))
    }
  })

  it("crc32Patched: a CRC carried over changed bytes equals the CRC recomputed, at any place and length", () => {
    const next = prng(2)
    for (let i = 0; i < 300; i++) {
      // lengths across the powers of two the patch composes, up to 2 MiB
      const data = randomBytes(next, i < 20 ? Math.floor(next() * (2 << 20)) + 8 : Math.floor(next() * 600) + 8)
      const at = Math.floor(next() * (data.length - 3))
      const span = Math.min(data.length - at, 1 + Math.floor(next() * 4))
      const crc = crc32(data)
      const before = data.slice(at, at + span)
      const changed = Uint8Array.from(data)
      changed.set(randomBytes(next, span), at)
      expect(crc32Patched(crc, before, changed.subarray(at, at + span), data.length - at - span)).toBe(crc32(changed))
    }
  })

  it("builds the artificial events a binlog server sends", () => {
    const rotate = ok(parseEvent(makeFakeRotate({ fileName: "phx-bin.000001", serverId: 9 }), { checksum: true }))
    expect(rotate.header).toMatchObject({ timestamp: 0, type: EventType.Rotate, logPos: 0, flags: EventFlag.Artificial, serverId: 9 })
    expect(ok(decodeRotate(rotate))).toEqual({ position: 4, fileName: "phx-bin.000001" })

    const gtids = [{ domain: 0, server: 1, seq: 5 }, { domain: 3, server: 2, seq: 2 ** 40 }]
    const listBytes = makeGtidList({ gtids, serverId: 1, logPos: 300, flags: EventFlag.Artificial })
    const list = ok(parseEvent(listBytes, { checksum: true }))
    expect(list.header.flags).toBe(EventFlag.Artificial)
    expect(ok(decodeGtidList(list))).toEqual({ flags: 0, gtids })
    expect(ok(decodeGtidList(ok(parseEvent(makeGtidList({ gtids: [], serverId: 1, logPos: 0 }), { checksum: true }))))).toEqual({
      flags: 0,
      gtids: []
    })

    const hb = ok(parseEvent(makeHeartbeat({ fileName: "bin.000007", logPos: 4321, serverId: 2 }), { checksum: true }))
    expect(ok(decodeHeartbeat(hb))).toEqual({ fileName: "bin.000007", logPos: 4321 })
    const noCrc = makeHeartbeat({ fileName: "b", logPos: 1, serverId: 2, checksum: false })
    expect(noCrc.length).toBe(20)
    expect(ok(parseEvent(noCrc, { checksum: false })).checksum).toBeNull()
  })

  it("rejects malformed transaction sequences with typed errors", () => {
    const gtid = (seq: number, flags = 0) => {
      const body = new Uint8Array(19)
      new DataView(body.buffer).setBigUint64(0, BigInt(seq), true)
      body[12] = flags
      return body
    }
    const seal = (type: number, body: Uint8Array) => buildEvent({ type, body, serverId: 1, logPos: 500 })
    const g1 = seal(EventType.Gtid, gtid(1))
    const g2 = seal(EventType.Gtid, gtid(2))
    const xid = seal(EventType.Xid, new Uint8Array(8))
    const a = new TransactionAssembler({ checksum: true })

    const noGtid = a.push(xid)
    expect(Result.isFailure(noGtid) && noGtid.failure._tag === "TransactionSequenceError" && noGtid.failure.reason).toBe("no-gtid")
    expect(ok(a.push(g1))).toEqual([])
    const twice = a.push(g2)
    expect(Result.isFailure(twice) && twice.failure._tag === "TransactionSequenceError" && twice.failure.reason).toBe("unterminated")
    expect(a.pending).toBe(false)
    expect(ok(a.push(g2))).toEqual([])
    const done = ok(a.push(xid))
    expect(done).toHaveLength(1)
    expect(done[0]).toMatchObject({ _tag: "Transaction", gtid: { domain: 0, server: 1, seq: 2 }, kind: "xid", endLogPos: 500 })

    const standaloneXid = new TransactionAssembler({ checksum: true })
    ok(standaloneXid.push(seal(EventType.Gtid, gtid(3, GtidFlag.Standalone))))
    const bad = standaloneXid.push(xid)
    expect(Result.isFailure(bad) && bad.failure._tag === "TransactionSequenceError" && bad.failure.reason).toBe("unexpected-event")

    const incomplete = groupTransactions([g1], { checksum: true })
    expect(Result.isFailure(incomplete) && incomplete.failure._tag === "TransactionSequenceError" && incomplete.failure.reason).toBe(
      "incomplete"
    )
    // seq_no 0 is not a GTID
    const zero = new TransactionAssembler({ checksum: true }).push(seal(EventType.Gtid, gtid(0)))
    expect(errTag(zero)).toBe("BinlogEventError")
  })

  it("survives seeded random garbage", () => {
    const next = prng(20240601)
    for (let i = 0; i < 3000; i++) {
      const n = Math.floor(next() * 120)
      const bytes = randomBytes(next, n)
      // half the time make event_size consistent so the body readers see garbage bodies
      if (n >= 19 && next() < 0.5) new DataView(bytes.buffer).setUint32(9, n, true)
      // and sometimes a type the decoders care about
      if (n >= 19 && next() < 0.5) bytes[4] = [2, 4, 15, 16, 27, 161, 162, 163][Math.floor(next() * 8)]!
      exercise(bytes)
      const file = new Uint8Array(4 + n)
      file.set([0xfe, 0x62, 0x69, 0x6e])
      file.set(bytes, 4)
      for (const allowTruncatedTail of [true, false]) {
        const r = parseBinlogFile(file, { allowTruncatedTail })
        if (Result.isFailure(r)) expect(r.failure._tag).toBe("BinlogFileError")
      }
    }
    // statementKind is total
    expect(statementKind("  commit ")).toBe("commit")
    expect(statementKind("ROLLBACK TO SAVEPOINT s")).toBe("other")
    expect(statementKind("XA ROLLBACK X'31',X'',1")).toBe("xa-rollback")
  })
})
