import { describe, expect, it } from "@effect/vitest"
import { Result } from "effect"
import { type CapturedPart, type CapturedTxn, CaptureState } from "../src/domain/binlog/capture.js"
import { buildEvent, EventType } from "../src/domain/binlog/event.js"
import { concatBytes } from "../src/domain/mysql/packet.js"

/** A transaction's events as a server sends them: Gtid, Table_map, `rows` Write_rows of `rowBytes`, Xid. */
const transaction = (seq: number, rows: number, rowBytes: number): ReadonlyArray<Uint8Array> => {
  const gtid = new Uint8Array(19)
  new DataView(gtid.buffer).setBigUint64(0, BigInt(seq), true)
  let pos = 4
  const event = (type: number, body: Uint8Array) => buildEvent({ type, body, serverId: 1, logPos: (pos += 19 + body.length + 4) })
  return [
    event(EventType.Gtid, gtid),
    event(EventType.TableMap, new Uint8Array(40).fill(1)),
    ...Array.from({ length: rows }, (_, i) => event(EventType.WriteRows, new Uint8Array(rowBytes).fill(i % 251))),
    event(EventType.Xid, new Uint8Array(8))
  ]
}

const capture = (events: ReadonlyArray<Uint8Array>, partBytes?: number) => {
  const state = new CaptureState(false, partBytes)
  const parts: Array<CapturedPart> = []
  const txns: Array<CapturedTxn> = []
  for (const e of events) {
    const out = state.push(concatBytes([new Uint8Array([0]), e]))
    if (Result.isFailure(out)) throw new Error(out.failure.message)
    for (const o of out.success) {
      if (o._tag === "Part") parts.push(o.part)
      if (o._tag === "Txn") txns.push(o.txn)
    }
  }
  return { parts, txns }
}

describe("capture in parts (a large transaction)", () => {
  it("hands out a transaction's bytes in parts of exactly partBytes as they arrive, then the rest with the count", () => {
    const events = transaction(7, 30, 3_000)
    const whole = concatBytes(events)
    for (const partBytes of [1_000, 4_096, 8_192, 50_000]) {
      const { parts, txns } = capture(events, partBytes)
      expect(txns).toHaveLength(1)
      const txn = txns[0]!
      expect(parts.map((p) => p.part)).toEqual(parts.map((_, i) => i))
      expect(parts.every((p) => p.bytes.length === partBytes && p.gtid.seq === 7)).toBe(true)
      expect(txn.parts ?? 0).toBe(parts.length)
      // End to end, the parts and the rest are the transaction's bytes, nothing more or less.
      expect(Buffer.from(concatBytes([...parts.map((p) => p.bytes), ...txn.events])).equals(Buffer.from(whole))).toBe(true)
      // Each part is handed out before the transaction's last event arrives, and the rest is shorter than a part plus an event.
      expect(concatBytes(txn.events).length).toBeLessThan(partBytes + 3_100)
    }
  })

  it("leaves a transaction smaller than a part whole, and splits nothing without partBytes", () => {
    const events = transaction(8, 3, 100)
    const small = capture(events, 8_192)
    expect(small.parts).toEqual([])
    expect(small.txns[0]!.parts).toBeUndefined()
    const unsplit = capture(transaction(9, 30, 3_000))
    expect(unsplit.parts).toEqual([])
    expect(unsplit.txns[0]!.events).toHaveLength(33)
  })

  it("numbers the next transaction's parts from 0 again", () => {
    const { parts, txns } = capture([...transaction(10, 10, 3_000), ...transaction(11, 10, 3_000)], 8_192)
    expect(txns.map((t) => [t.gtid.seq, t.parts])).toEqual([[10, parts.filter((p) => p.gtid.seq === 10).length], [11, parts.filter((p) => p.gtid.seq === 11).length]])
    expect(parts.filter((p) => p.gtid.seq === 11).map((p) => p.part)).toEqual([0, 1, 2])
  })
})
