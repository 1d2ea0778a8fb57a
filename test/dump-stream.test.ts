import { describe, expect, it } from "@effect/vitest"
import { Result } from "effect"
import { DumpStream } from "../src/domain/binlog/dumpStream.js"
import { buildEvent, EventFlag, EventType, parseEvent } from "../src/domain/binlog/event.js"
import { encodePackets } from "../src/domain/mysql/packet.js"
import { buildBinlogEventPacket } from "../src/domain/mysql/protocol.js"

const parse = (b: Uint8Array) => {
  const r = parseEvent(b, { checksum: true })
  if (Result.isFailure(r)) throw new Error(r.failure.message)
  return r.success
}

/** A Format_description like a 10.11 server's: fixed part, post-header lengths, checksum alg CRC32. */
const fde = (() => {
  const body = new Uint8Array(57 + 40 + 1)
  const v = new DataView(body.buffer)
  v.setUint16(0, 4, true)
  body.set(new TextEncoder().encode("10.11.19-MariaDB"), 2)
  v.setUint32(52, 1_700_000_000, true)
  body[56] = 19
  body[body.length - 1] = 1
  return buildEvent({ type: EventType.FormatDescription, body, serverId: 7, logPos: 256, timestamp: 123, flags: 1 })
})()

describe("dump stream (virtual binlog file)", () => {
  it("opens with Rotate, FDE, Gtid_list and the connect state, then places transactions one after another", () => {
    const stream = new DumpStream({ fileName: "phx-bin.000001", serverId: 99 })
    const opening = stream.opening(fde, [{ domain: 0, server: 1, seq: 41 }])
    expect(Result.isSuccess(opening)).toBe(true)
    const [rotate, fdeOut, list, connect] = Result.getOrThrow(opening).map(parse)
    expect(rotate!.header).toMatchObject({ type: EventType.Rotate, logPos: 0, flags: EventFlag.Artificial, timestamp: 0 })
    expect(fdeOut!.header).toMatchObject({ type: EventType.FormatDescription, logPos: 4 + fde.length, flags: 0, serverId: 7 })
    expect(new DataView(fdeOut!.body.buffer, fdeOut!.body.byteOffset).getUint32(52, true)).toBe(0) // created 0
    expect(list!.header.logPos).toBe(4 + fde.length + serializedLength(list!))
    expect(connect!.header).toMatchObject({ type: EventType.GtidList, flags: EventFlag.Artificial, logPos: 0 })

    // A transaction from another server keeps its bytes except log_pos (and the CRC).
    const events = [1, 2, 3].map((i) =>
      buildEvent({ type: EventType.Query, body: new Uint8Array(10 * i).fill(i), serverId: 1, logPos: 99_999, timestamp: 5 }))
    const start = stream.logPos
    const moved = Result.getOrThrow(stream.transaction(events)).map(parse)
    let end = start
    moved.forEach((e, i) => {
      end += events[i]!.length
      expect(e.header).toMatchObject({ logPos: end, serverId: 1, timestamp: 5 })
      expect(e.body).toEqual(parse(events[i]!).body)
    })
    expect(stream.logPos).toBe(end)
    expect(parse(stream.heartbeat()).header).toMatchObject({ type: EventType.Heartbeat, logPos: end })
  })

  it("frames a transaction as packets in one buffer, byte for byte what framing each placed event gives", () => {
    const events = [1, 2, 3].map((i) =>
      buildEvent({ type: EventType.Query, body: new Uint8Array(30 * i).fill(i), serverId: 1, logPos: 99_999, timestamp: 5 }))
    const a = new DumpStream({ fileName: "phx-bin.000001", serverId: 99 })
    const b = new DumpStream({ fileName: "phx-bin.000001", serverId: 99 })
    Result.getOrThrow(a.opening(fde, []))
    Result.getOrThrow(b.opening(fde, []))
    let seq = 254 // wraps past 255
    const expected: Array<Uint8Array> = []
    for (const e of Result.getOrThrow(a.transaction(events))) {
      const framed = encodePackets(seq, buildBinlogEventPacket(e))
      seq = framed.nextSequenceId
      expected.push(framed.bytes)
    }
    const got = Result.getOrThrow(b.transactionPackets(events, 254))!
    expect(Buffer.from(got.bytes).equals(Buffer.concat(expected))).toBe(true)
    expect(got.nextSequenceId).toBe(seq)
    expect(b.logPos).toBe(a.logPos)
    const bad = Uint8Array.from(events[0]!)
    bad[25]! ^= 0xff
    expect(Result.isFailure(b.transactionPackets([bad], 0))).toBe(true)
  })

  it("refuses a corrupted event instead of giving it a fresh checksum", () => {
    const stream = new DumpStream({ fileName: "phx-bin.000001", serverId: 99 })
    const good = buildEvent({ type: EventType.Query, body: new Uint8Array(20), serverId: 1, logPos: 1 })
    const bad = Uint8Array.from(good)
    bad[25]! ^= 0xff
    expect(Result.isFailure(stream.transaction([bad]))).toBe(true)
    expect(Result.isFailure(stream.opening(good, []))).toBe(true) // not a Format_description
  })
})

const serializedLength = (e: { readonly body: Uint8Array; readonly checksum: number | null }) => 19 + e.body.length + (e.checksum === null ? 0 : 4)
