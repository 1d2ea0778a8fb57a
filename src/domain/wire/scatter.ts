/**
 * msgpack encoding as a list of byte ranges for a vectored write: a binary of at least
 * {@link LARGE_BINARY_BYTES} is not copied but is a range of its own, between the encoded
 * bytes before and after it. msgpackr copies every binary into its buffer, which it
 * allocates at four times the size needed; for the 1 MiB values of large transactions
 * that copy, into memory touched for the first time, was the largest single cost of an
 * agent (40 % of the master's busy time under 1 MiB rows).
 *
 * The bytes are standard msgpack, decoded by the same decoder as msgpackr's output (frame.ts),
 * with the same values: plain objects as maps (keys in insertion order), arrays, strings,
 * numbers (integers of up to 32 bits as msgpack integers, others as float 64), booleans,
 * null, undefined (fixext 1 of type 0, as msgpackr writes it) and Uint8Array as bin.
 * Anything else is refused with a TypeError. Pure.
 */

/** Binaries this large or larger are ranges of their own. */
export const LARGE_BINARY_BYTES = 64 * 1024

export interface Scattered {
  /** In order; `reserve` bytes at the start of the first are left for the caller's header. */
  readonly parts: ReadonlyArray<Uint8Array>
  /** Their total length, the reserved room included. */
  readonly length: number
}

/** Encoded msgpack strings of short keys and tags: the same few every message. */
const strings = new Map<string, Uint8Array>()
const MAX_CACHED_STRINGS = 1024

/**
 * A writer's first buffer: a Paxos message or a small entry fits (from 256 bytes, a batch
 * of eight small transactions grew five times), and Node takes it from its shared pool.
 */
const INITIAL_BYTES = 2048

class Writer {
  buf: Buffer
  view: DataView
  pos: number
  /** Where the range being written began (the previous ones are in `parts`). */
  start = 0
  readonly parts: Array<Uint8Array> = []
  length = 0

  constructor(reserve: number) {
    this.buf = Buffer.allocUnsafe(Math.max(INITIAL_BYTES, reserve * 2))
    this.view = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.length)
    this.pos = reserve
  }

  room(n: number): void {
    if (this.pos + n <= this.buf.length) return
    // A new buffer for the rest; the range written so far stays in the old one.
    const carried = this.pos - this.start
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, carried + n + 64))
    this.buf.copy(next, 0, this.start, this.pos)
    this.buf = next
    this.view = new DataView(next.buffer, next.byteOffset, next.length)
    this.start = 0
    this.pos = carried
  }

  byte(b: number): void {
    this.room(1)
    this.buf[this.pos++] = b
  }

  /** The range written so far, then `bytes` as a range of its own. */
  attach(bytes: Uint8Array): void {
    this.parts.push(this.buf.subarray(this.start, this.pos))
    this.length += this.pos - this.start
    this.parts.push(bytes)
    this.length += bytes.length
    this.start = this.pos
  }

  finish(): Scattered {
    if (this.pos > this.start || this.parts.length === 0) {
      this.parts.push(this.buf.subarray(this.start, this.pos))
      this.length += this.pos - this.start
    }
    return { parts: this.parts, length: this.length }
  }
}

const writeString = (w: Writer, s: string): void => {
  const cached = strings.get(s)
  if (cached !== undefined) {
    w.room(cached.length)
    w.buf.set(cached, w.pos)
    w.pos += cached.length
    return
  }
  const n = Buffer.byteLength(s, "utf8")
  w.room(n + 5)
  const at = w.pos
  writeHead(w, n, STR)
  w.pos += w.buf.write(s, w.pos, n, "utf8")
  if (n <= 32 && strings.size < MAX_CACHED_STRINGS) strings.set(s, Uint8Array.prototype.slice.call(w.buf, at, w.pos))
}

const writeNumber = (w: Writer, x: number): void => {
  w.room(9)
  const b = w.buf
  if (x >>> 0 === x) {
    writeHead(w, x, UINT)
  } else if (x >> 0 === x) {
    if (x >= -0x20) b[w.pos++] = x & 0xff
    else if (x >= -0x80) {
      b[w.pos++] = 0xd0
      w.view.setInt8(w.pos++, x)
    } else if (x >= -0x8000) {
      b[w.pos++] = 0xd1
      w.view.setInt16(w.pos, x)
      w.pos += 2
    } else {
      b[w.pos++] = 0xd2
      w.view.setInt32(w.pos, x)
      w.pos += 4
    }
  } else {
    b[w.pos++] = 0xcb
    w.view.setFloat64(w.pos, x)
    w.pos += 8
  }
}

/** A kind's header codes: the fix form (its code and bound) if any, the 8-bit form if any, then 16 and 32 bits. */
interface Head {
  readonly fix?: number
  readonly fixBelow: number
  readonly op8?: number
  readonly op16: number
  readonly op32: number
}
const STR: Head = { fix: 0xa0, fixBelow: 32, op8: 0xd9, op16: 0xda, op32: 0xdb }
const BIN: Head = { fixBelow: 0, op8: 0xc4, op16: 0xc5, op32: 0xc6 }
const ARRAY: Head = { fix: 0x90, fixBelow: 16, op16: 0xdc, op32: 0xdd }
const MAP: Head = { fix: 0x80, fixBelow: 16, op16: 0xde, op32: 0xdf }
/** An unsigned integer is its own "length": positive fixint, then uint 8, 16, 32. */
const UINT: Head = { fix: 0x00, fixBelow: 0x80, op8: 0xcc, op16: 0xcd, op32: 0xce }

/** The header of a string, binary, array or map of `n` (bytes or items), or an unsigned integer `n`. */
const writeHead = (w: Writer, n: number, h: Head): void => {
  w.room(5)
  if (h.fix !== undefined && n < h.fixBelow) w.buf[w.pos++] = h.fix | n
  else if (h.op8 !== undefined && n < 0x100) {
    w.buf[w.pos++] = h.op8
    w.buf[w.pos++] = n
  } else if (n < 0x10000) {
    w.buf[w.pos++] = h.op16
    w.view.setUint16(w.pos, n)
    w.pos += 2
  } else {
    w.buf[w.pos++] = h.op32
    w.view.setUint32(w.pos, n)
    w.pos += 4
  }
}

const writeBinary = (w: Writer, bytes: Uint8Array): void => {
  const n = bytes.length
  writeHead(w, n, BIN)
  if (n >= LARGE_BINARY_BYTES) return w.attach(bytes)
  w.room(n)
  w.buf.set(bytes, w.pos)
  w.pos += n
}

const writeValue = (w: Writer, v: unknown, depth: number): void => {
  if (depth > 64) throw new TypeError("value nested more than 64 levels deep")
  switch (typeof v) {
    case "string":
      return writeString(w, v)
    case "number":
      return writeNumber(w, v)
    case "boolean":
      return w.byte(v ? 0xc3 : 0xc2)
    case "undefined":
      w.room(3)
      w.buf[w.pos++] = 0xd4
      w.buf[w.pos++] = 0
      w.buf[w.pos++] = 0
      return
    case "object": {
      if (v === null) return w.byte(0xc0)
      if (v instanceof Uint8Array) return writeBinary(w, v)
      if (Array.isArray(v)) {
        writeHead(w, v.length, ARRAY)
        for (const x of v) writeValue(w, x, depth + 1)
        return
      }
      const proto = Object.getPrototypeOf(v)
      if (proto !== Object.prototype && proto !== null) break
      const keys = Object.keys(v)
      writeHead(w, keys.length, MAP)
      for (const k of keys) {
        writeString(w, k)
        writeValue(w, (v as Record<string, unknown>)[k], depth + 1)
      }
      return
    }
  }
  throw new TypeError(`cannot encode a ${typeof v === "object" ? (v as object).constructor?.name ?? "object" : typeof v} as msgpack`)
}

/** `value` as msgpack, in ranges (large binaries not copied), behind `reserve` bytes of room. Throws TypeError. */
export const packScatter = (value: unknown, reserve = 0): Scattered => {
  const w = new Writer(reserve)
  writeValue(w, value, 0)
  return w.finish()
}

/** The ranges joined in one buffer (for a caller that needs the bytes whole). */
export const joinParts = (s: Scattered): Uint8Array => {
  if (s.parts.length === 1) return s.parts[0]!
  return Buffer.concat(s.parts as Array<Uint8Array>, s.length)
}
