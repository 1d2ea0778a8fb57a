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

  it("frames a transaction as packets, byte for byte what framing each placed event gives, large bodies not copied", () => {
    // Small events and one of 100 KiB, whose body is sent from its own memory.
    const events = [30, 60, 100 * 1024, 90].map((size, i) =>
      buildEvent({ type: EventType.Query, body: new Uint8Array(size).fill(i + 1), serverId: 1, logPos: 99_999, timestamp: 5 }))
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
    const joined = Buffer.concat(got.parts)
    expect(joined.equals(Buffer.concat(expected))).toBe(true)
    expect(got.bytes).toBe(joined.length)
    expect(got.nextSequenceId).toBe(seq)
    expect(b.logPos).toBe(a.logPos)
    const large = events[2]!
    const body = got.parts.find((p) => p.length === large.length - 19 - 4)!
    expect(body.buffer).toBe(large.buffer)
    expect(body.byteOffset).toBe(large.byteOffset + 19)
    expect(got.parts.length).toBe(3)
  })

  it("gives a corrupted event no valid checksum: its mismatch is carried to the replica, which refuses it", () => {
    for (const size of [20, 100 * 1024]) {
      const good = buildEvent({ type: EventType.Query, body: new Uint8Array(size).fill(3), serverId: 1, logPos: 1 })
      const bad = Uint8Array.from(good)
      bad[25]! ^= 0xff
      const stream = new DumpStream({ fileName: "phx-bin.000001", serverId: 99 })
      Result.getOrThrow(stream.opening(fde, []))
      const sent = Buffer.concat(Result.getOrThrow(stream.transactionPackets([bad], 0))!.parts).subarray(5)
      expect(Result.isFailure(parseEvent(sent, { checksum: true }))).toBe(true)
      // The same bytes uncorrupted pass: the mismatch is the corruption's, not the move's.
      const fine = new DumpStream({ fileName: "phx-bin.000001", serverId: 99 })
      Result.getOrThrow(fine.opening(fde, []))
      const moved = Buffer.concat(Result.getOrThrow(fine.transactionPackets([good], 0))!.parts).subarray(5)
      expect(parse(moved).header.logPos).toBe(fine.logPos)
    }
    // An event whose size field disagrees with its bytes is refused.
    const short = buildEvent({ type: EventType.Query, body: new Uint8Array(20), serverId: 1, logPos: 1 }).subarray(0, 30)
    expect(Result.isFailure(new DumpStream({ fileName: "f", serverId: 1 }).transactionPackets([short], 0))).toBe(true)
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
