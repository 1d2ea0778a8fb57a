import { describe, expect, it } from "@effect/vitest"
import { Effect, Result } from "effect"
import { readFileSync } from "node:fs"
import { type CapturedTxn, CaptureState } from "../src/domain/binlog/capture.js"
import { EventType, makeFakeRotate } from "../src/domain/binlog/event.js"
import { parseBinlogFile } from "../src/domain/binlog/file.js"
import { MariaDbInstance } from "./support/MariaDbInstance.js"
import { gtidBinlogPos, mixedWorkload } from "./support/replication.js"

describe("capture state (dump packets to transactions)", () => {
  it.live("groups a real server's events into transactions with file, end position and need-ack", () =>
    Effect.gen(function*() {
      const db = yield* MariaDbInstance.make({})
      yield* mixedWorkload(db, 120)
      const last = yield* gtidBinlogPos(db)
      yield* db.query("FLUSH BINARY LOGS")
      const file = Result.getOrThrow(parseBinlogFile(readFileSync(`${db.binlogBase}.000001`)))

      // The packets a semi-sync dump would carry: a fake Rotate, then every event, with the
      // need-ack byte set on each transaction's last event.
      const state = new CaptureState(true)
      const packet = (event: Uint8Array, needAck: boolean) => Uint8Array.from([0x00, 0xef, needAck ? 1 : 0, ...event])
      const txns: Array<CapturedTxn> = []
      let fde = 0
      const feed = (p: Uint8Array) => {
        const r = state.push(p)
        if (Result.isFailure(r)) throw new Error(r.failure.message)
        for (const o of r.success) o._tag === "Txn" ? txns.push(o.txn) : fde++
      }
      feed(packet(makeFakeRotate({ fileName: "bin.000001", serverId: db.serverId }), false))
      for (const e of file.events) {
        const ends = e.event.header.type === EventType.Xid || e.event.header.type === EventType.Query
        feed(packet(e.bytes, ends))
      }
      expect(fde).toBe(1)
      expect(txns).toHaveLength(120)
      expect(txns.map((t) => t.gtid.seq)).toEqual(Array.from({ length: 120 }, (_, i) => i + 1))
      expect(`0-${db.serverId}-${txns[119]!.gtid.seq}`).toBe(last)
      expect(new Set(txns.map((t) => t.file))).toEqual(new Set(["bin.000001"]))
      expect(txns.every((t) => t.needAck)).toBe(true)
      // endPos is where the transaction ends in the file: the next one's Gtid event starts there.
      const starts = new Map(file.events.map((e) => [e.offset, e.event.header.type]))
      for (const t of txns.slice(0, -1)) expect(starts.get(t.endPos)).toBe(EventType.Gtid)

      // Without the need-ack byte (an async commit), no transaction asks for an ACK.
      const relaxed = new CaptureState(true)
      const flags: Array<boolean> = []
      for (const e of file.events) {
        const r = relaxed.push(packet(e.bytes, false))
        if (Result.isSuccess(r)) for (const o of r.success) if (o._tag === "Txn") flags.push(o.txn.needAck)
      }
      expect(flags).toHaveLength(120)
      expect(flags.some(Boolean)).toBe(false)

      // A stream without semi-sync has no indicator; garbage is a typed failure, not a throw.
      expect(Result.isFailure(new CaptureState(false).push(Uint8Array.from([0xff, 1, 2])))).toBe(true)
      expect(Result.isFailure(new CaptureState(true).push(Uint8Array.from([0x00, 0x12, 0])))).toBe(true)
      expect(Result.isFailure(new CaptureState(false).push(Uint8Array.from([0x00, 1, 2, 3])))).toBe(true)
    }))
})
