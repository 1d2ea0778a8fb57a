import { describe, expect, it } from "@effect/vitest"
import { Result } from "effect"
import { Packr } from "msgpackr"
import { readWalFrame } from "../src/domain/paxos/walFrame.js"
import { encodeWalFrame } from "../src/domain/paxos/walFrame.js"
import { decodePayload, FRAME_HEADER_BYTES, FrameDecoder, tryEncodeFrame, tryEncodeFrameParts } from "../src/domain/wire/frame.js"
import { joinParts, LARGE_BINARY_BYTES, packScatter } from "../src/domain/wire/scatter.js"
import { Rng } from "./support/sim.js"

/** msgpackr configured as the wire decodes (frame.ts): its own encoding is the reference the scattered one must match. */
const reference = new Packr({ useRecords: false, moreTypes: false, structuredClone: false, mapsAsObjects: true })

const SEEDS = Number(process.env.SCATTER_SEEDS ?? 300)

/** A random value of the kinds messages hold, binaries of every size class included. */
const randomValue = (rng: Rng, depth: number): unknown => {
  const kind = rng.int(0, depth > 3 ? 7 : 9)
  switch (kind) {
    case 0:
      return null
    case 1:
      return rng.next() < 0.5
    case 2: {
      // Integers at every msgpack boundary, and beyond 32 bits.
      const edges = [0, 1, 31, 127, 128, 255, 256, 65535, 65536, 2 ** 32 - 1, 2 ** 32, 2 ** 53 - 1]
      const x = edges[rng.int(0, edges.length - 1)]! + rng.int(-1, 1)
      return rng.next() < 0.3 ? -x : x
    }
    case 3:
      return (rng.next() - 0.5) * 10 ** rng.int(-5, 12)
    case 4: {
      const lengths = [0, 5, 31, 32, 255, 256, 70_000]
      const n = lengths[rng.int(0, lengths.length - 1)]!
      const chars = ["a", "Z", "é", "中", "😀", "_"]
      let s = ""
      while (s.length < n) s += chars[rng.int(0, chars.length - 1)]!
      return s
    }
    case 5:
    case 6: {
      const lengths = [0, 1, 255, 256, 65_535, 65_536, LARGE_BINARY_BYTES - 1, LARGE_BINARY_BYTES, 300_000]
      const n = lengths[rng.int(0, lengths.length - 1)]!
      const b = Buffer.allocUnsafe(n)
      for (let i = 0; i < n; i += 997) b[i] = rng.int(0, 255)
      return rng.next() < 0.5 ? b : new Uint8Array(b.buffer, b.byteOffset, b.length)
    }
    case 7:
      return undefined
    case 8: {
      const n = [0, 3, 15, 16, 17][rng.int(0, 4)]!
      return Array.from({ length: n }, () => randomValue(rng, depth + 1))
    }
    default: {
      const n = [0, 2, 15, 16, 20][rng.int(0, 4)]!
      const o: Record<string, unknown> = {}
      for (let i = 0; i < n; i++) o[`k${i}_${rng.int(0, 99)}`] = randomValue(rng, depth + 1)
      return o
    }
  }
}

const decoded = (bytes: Uint8Array) => reference.unpack(bytes)

describe("scattered msgpack", () => {
  it("decodes to what msgpackr's own encoding decodes to, over seeds", () => {
    const failed: Array<number> = []
    for (let seed = 1; seed <= SEEDS; seed++) {
      const value = { _tag: "Accept", body: randomValue(new Rng(seed), 0), values: [randomValue(new Rng(seed + 7), 3)] }
      const reserve = seed % 9
      const s = packScatter(value, reserve)
      const joined = joinParts(s)
      const ok = joined.length === s.length && s.parts.reduce((n, p) => n + p.length, 0) === s.length &&
        same(decoded(joined.subarray(reserve)), decoded(reference.pack(value)))
      if (!ok) failed.push(seed)
    }
    if (failed.length > 0) console.log(`scatter: failing seeds (replay with SCATTER_SEEDS): ${failed.join(", ")}`)
    expect(failed).toEqual([])
  })

  it("does not copy large binaries: they are ranges of their own, the same memory", () => {
    const big = Buffer.alloc(LARGE_BINARY_BYTES * 3, 7)
    const small = Buffer.alloc(LARGE_BINARY_BYTES - 1, 9)
    const s = packScatter({ _tag: "CatchupReply", entries: [{ values: [big, small, big] }] })
    const attached = s.parts.filter((p) => p.buffer === big.buffer)
    expect(attached.length).toBe(2)
    expect(s.parts.some((p) => p.buffer === small.buffer)).toBe(false)
    // Before the first, between the two (the small one inline), nothing after the last.
    expect(s.parts.length).toBe(4)
  })

  it("refuses what msgpack cannot hold", () => {
    expect(() => packScatter({ at: new Date() })).toThrow(TypeError)
    expect(() => packScatter(new Map())).toThrow(TypeError)
    expect(() => packScatter(10n)).toThrow(TypeError)
    expect(Result.isFailure(tryEncodeFrameParts({ x: Symbol("s") }))).toBe(true)
  })

  it("a scattered frame reads back through the frame decoder like a whole one", () => {
    const value = { _tag: "Accept", instance: 9, value: { values: [Buffer.alloc(200_000, 3), Buffer.from("tiny")] } }
    const parts = tryEncodeFrameParts(value)
    const whole = tryEncodeFrame(value)
    if (Result.isFailure(parts) || Result.isFailure(whole)) throw new Error("encode failed")
    const decoder = new FrameDecoder()
    const frames = parts.success.parts.flatMap((p) => decoder.push(p).frames)
    expect(frames.length).toBe(1)
    expect(frames[0]!.length).toBe(parts.success.length - FRAME_HEADER_BYTES)
    expect(decodePayload(frames[0]!)).toEqual(decodePayload(whole.success.subarray(FRAME_HEADER_BYTES)))
  })

  it("a scattered WAL frame has the checksum of its joined bytes, and a changed byte fails it", () => {
    const entry = { _tag: "Accepted", instance: 3, value: { values: [Buffer.alloc(LARGE_BINARY_BYTES * 2, 5)] } }
    const joined = joinParts(encodeWalFrame(entry))
    const read = readWalFrame(joined, 0)
    expect(read?.length).toBe(joined.length)
    expect(read?.value).toEqual(entry)
    joined[joined.length - 10] ^= 1
    expect(readWalFrame(joined, 0)).toBeUndefined()
  })
})

/** Deep equality of decoded values: binaries by their bytes, undefined apart from null, key order included. */
const same = (a: unknown, b: unknown): boolean => {
  if (a instanceof Uint8Array || b instanceof Uint8Array) {
    return a instanceof Uint8Array && b instanceof Uint8Array && Buffer.from(a.buffer, a.byteOffset, a.length).equals(b)
  }
  if (Array.isArray(a) || Array.isArray(b)) {
    return Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.every((x, i) => same(x, b[i]))
  }
  if (typeof a === "object" && a !== null && typeof b === "object" && b !== null) {
    const ka = Object.keys(a)
    const kb = Object.keys(b)
    return ka.length === kb.length && ka.every((k, i) => k === kb[i] && same((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]))
  }
  return Object.is(a, b)
}
