/**
 * MySQL wire framing and primitive encodings. Pure: no I/O.
 *
 * A physical packet is `length u24 | sequence_id u8 | payload`. A logical
 * payload of 0xFFFFFF bytes or more is split into 0xFFFFFF-byte packets; a
 * packet shorter than 0xFFFFFF (possibly empty) ends it. Binlog events over
 * 16 MiB arrive that way.
 *
 * `PacketReader` methods throw `PacketError`; `decode` runs a reader function
 * and turns that into a `Result`, so nothing thrown here escapes the module's
 * parsers. Builders (`PacketWriter`) throw `PacketError` only for invalid
 * arguments, i.e. programming errors, never for received bytes.
 */
import { Data, Result } from "effect"

export const MAX_PACKET_PAYLOAD = 0xffffff
export const HEADER_LENGTH = 4

export class PacketError extends Data.TaggedError("PacketError")<{
  readonly reason: "truncated" | "malformed" | "too-large" | "sequence" | "unexpected" | "unsupported" | "out-of-range"
  readonly message: string
}> {}

const err = (reason: PacketError["reason"], message: string) => new PacketError({ reason, message })

const utf8Decoder = new TextDecoder("utf-8", { fatal: false })
const utf8Encoder = new TextEncoder()

export const utf8 = (s: string): Uint8Array => utf8Encoder.encode(s)
export const fromUtf8 = (b: Uint8Array): string => utf8Decoder.decode(b)

/** Runs `f` over a reader of `bytes`; a `PacketError` thrown inside becomes a failure. */
export const decode = <A>(bytes: Uint8Array, f: (r: PacketReader) => A): Result.Result<A, PacketError> => {
  try {
    return Result.succeed(f(new PacketReader(bytes)))
  } catch (e) {
    if (e instanceof PacketError) return Result.fail(e)
    throw e
  }
}

// ---------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------

/**
 * Sequential little-endian reads over one payload. Byte results are views
 * into the input (no copy): copy them if the input buffer is reused.
 */
export class PacketReader {
  private pos: number

  constructor(readonly bytes: Uint8Array, offset = 0) {
    this.pos = offset
  }

  get offset(): number {
    return this.pos
  }

  get remaining(): number {
    return this.bytes.length - this.pos
  }

  atEnd(): boolean {
    return this.pos >= this.bytes.length
  }

  /** The next byte without consuming it, or undefined at the end. */
  peek(): number | undefined {
    return this.bytes[this.pos]
  }

  private need(n: number, what: string): void {
    if (this.pos + n > this.bytes.length) {
      throw err("truncated", `${what}: need ${n} bytes at offset ${this.pos}, have ${this.remaining}`)
    }
  }

  skip(n: number): this {
    this.need(n, "skip")
    this.pos += n
    return this
  }

  u8(): number {
    this.need(1, "u8")
    return this.bytes[this.pos++]!
  }

  private uint(n: number, what: string): number {
    this.need(n, what)
    let v = 0
    for (let i = n - 1; i >= 0; i--) v = v * 256 + this.bytes[this.pos + i]!
    this.pos += n
    return v
  }

  u16(): number {
    return this.uint(2, "u16")
  }
  u24(): number {
    return this.uint(3, "u24")
  }
  u32(): number {
    return this.uint(4, "u32")
  }
  u48(): number {
    return this.uint(6, "u48")
  }

  u64(): bigint {
    this.need(8, "u64")
    let v = 0n
    for (let i = 7; i >= 0; i--) v = (v << 8n) | BigInt(this.bytes[this.pos + i]!)
    this.pos += 8
    return v
  }

  /** u64 as a number; fails (out-of-range) above 2^53 - 1. */
  u64Number(): number {
    return toSafe(this.u64(), "u64")
  }

  /** Length-encoded integer or null (0xFB, the NULL marker in text rows). */
  lenencIntOrNull(): number | null {
    const first = this.u8()
    if (first < 0xfb) return first
    switch (first) {
      case 0xfb:
        return null
      case 0xfc:
        return this.u16()
      case 0xfd:
        return this.u24()
      case 0xfe:
        return this.u64Number()
      default:
        throw err("malformed", `0xff is not a length-encoded integer (offset ${this.pos - 1})`)
    }
  }

  lenencInt(): number {
    const v = this.lenencIntOrNull()
    if (v === null) throw err("malformed", `unexpected NULL (0xfb) length-encoded integer at offset ${this.pos - 1}`)
    return v
  }

  bytesN(n: number): Uint8Array {
    this.need(n, "bytes")
    const out = this.bytes.subarray(this.pos, this.pos + n)
    this.pos += n
    return out
  }

  stringN(n: number): string {
    return fromUtf8(this.bytesN(n))
  }

  lenencBytes(): Uint8Array {
    return this.bytesN(this.lenencInt())
  }

  lenencString(): string {
    return fromUtf8(this.lenencBytes())
  }

  lenencStringOrNull(): string | null {
    const n = this.lenencIntOrNull()
    return n === null ? null : this.stringN(n)
  }

  /** Bytes up to a NUL (consumed, not returned); fails if there is none. */
  nulBytes(): Uint8Array {
    const end = this.bytes.indexOf(0, this.pos)
    if (end < 0) throw err("truncated", `no NUL terminator after offset ${this.pos}`)
    const out = this.bytes.subarray(this.pos, end)
    this.pos = end + 1
    return out
  }

  nulString(): string {
    return fromUtf8(this.nulBytes())
  }

  /** A NUL-terminated string, or the rest when the NUL is missing (some servers omit the last one). */
  nulStringOrRest(): string {
    return this.bytes.indexOf(0, this.pos) < 0 ? this.restString() : this.nulString()
  }

  rest(): Uint8Array {
    const out = this.bytes.subarray(this.pos)
    this.pos = this.bytes.length
    return out
  }

  restString(): string {
    return fromUtf8(this.rest())
  }
}

const toSafe = (v: bigint, what: string): number => {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw err("out-of-range", `${what} ${v} exceeds 2^53 - 1`)
  return Number(v)
}

// ---------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------

/** Growable little-endian writer; every method returns `this`. */
export class PacketWriter {
  private buf: Uint8Array
  private len = 0

  constructor(initialCapacity = 64) {
    this.buf = new Uint8Array(Math.max(16, initialCapacity))
  }

  get length(): number {
    return this.len
  }

  private ensure(n: number): void {
    if (this.len + n <= this.buf.length) return
    let cap = this.buf.length * 2
    while (cap < this.len + n) cap *= 2
    const next = new Uint8Array(cap)
    next.set(this.buf.subarray(0, this.len))
    this.buf = next
  }

  private uint(v: number, n: number, what: string): this {
    if (!Number.isSafeInteger(v) || v < 0 || v >= 2 ** (8 * n)) throw err("out-of-range", `${what}: ${v}`)
    this.ensure(n)
    for (let i = 0; i < n; i++) {
      this.buf[this.len++] = v % 256
      v = Math.floor(v / 256)
    }
    return this
  }

  u8(v: number): this {
    return this.uint(v, 1, "u8")
  }
  u16(v: number): this {
    return this.uint(v, 2, "u16")
  }
  u24(v: number): this {
    return this.uint(v, 3, "u24")
  }
  u32(v: number): this {
    return this.uint(v, 4, "u32")
  }
  u48(v: number): this {
    return this.uint(v, 6, "u48")
  }

  u64(v: number | bigint): this {
    let b = BigInt(v)
    if (b < 0n || b > 0xffffffffffffffffn) throw err("out-of-range", `u64: ${v}`)
    this.ensure(8)
    for (let i = 0; i < 8; i++) {
      this.buf[this.len++] = Number(b & 0xffn)
      b >>= 8n
    }
    return this
  }

  lenencInt(v: number | bigint): this {
    const n = BigInt(v)
    if (n < 0n) throw err("out-of-range", `lenenc: ${v}`)
    if (n < 0xfbn) return this.u8(Number(n))
    if (n <= 0xffffn) return this.u8(0xfc).u16(Number(n))
    if (n <= 0xffffffn) return this.u8(0xfd).u24(Number(n))
    return this.u8(0xfe).u64(n)
  }

  /** The 0xFB NULL marker of text rows. */
  lenencNull(): this {
    return this.u8(0xfb)
  }

  bytes(b: Uint8Array): this {
    this.ensure(b.length)
    this.buf.set(b, this.len)
    this.len += b.length
    return this
  }

  string(s: string): this {
    return this.bytes(utf8(s))
  }

  zeros(n: number): this {
    this.ensure(n)
    this.buf.fill(0, this.len, this.len + n)
    this.len += n
    return this
  }

  lenencBytes(b: Uint8Array): this {
    return this.lenencInt(b.length).bytes(b)
  }

  lenencString(s: string): this {
    return this.lenencBytes(utf8(s))
  }

  nulBytes(b: Uint8Array): this {
    if (b.includes(0)) throw err("out-of-range", "a NUL-terminated value contains NUL")
    return this.bytes(b).u8(0)
  }

  nulString(s: string): this {
    return this.nulBytes(utf8(s))
  }

  /** A copy of what was written. */
  finish(): Uint8Array {
    return this.buf.slice(0, this.len)
  }
}

// ---------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------

/**
 * One logical payload; `nextSequenceId` follows its last physical packet (the
 * id a reply starts with). A payload that came in one chunk is a view of it.
 */
export interface Packet {
  readonly sequenceId: number
  readonly nextSequenceId: number
  readonly payload: Uint8Array
}

/**
 * Frames `payload` starting at sequence id `seq`. Returns the bytes to write
 * and the sequence id that comes next.
 */
export const encodePackets = (
  seq: number,
  payload: Uint8Array
): { readonly bytes: Uint8Array; readonly nextSequenceId: number } => {
  // n full packets, then one short (maybe empty) packet that ends the payload
  const full = Math.floor(payload.length / MAX_PACKET_PAYLOAD)
  const out = new Uint8Array(payload.length + HEADER_LENGTH * (full + 1))
  let o = 0
  let s = seq & 0xff
  for (let i = 0; i <= full; i++) {
    const start = i * MAX_PACKET_PAYLOAD
    const n = Math.min(MAX_PACKET_PAYLOAD, payload.length - start)
    out[o] = n & 0xff
    out[o + 1] = (n >>> 8) & 0xff
    out[o + 2] = (n >>> 16) & 0xff
    out[o + 3] = s
    out.set(payload.subarray(start, start + n), o + HEADER_LENGTH)
    o += HEADER_LENGTH + n
    s = (s + 1) & 0xff
  }
  return { bytes: out, nextSequenceId: s }
}

/** Several payloads (e.g. a result set) framed with consecutive sequence ids from `seq`, in one buffer. */
export const encodePacketSequence = (
  seq: number,
  payloads: ReadonlyArray<Uint8Array>
): { readonly bytes: Uint8Array; readonly nextSequenceId: number } => {
  const framed: Array<Uint8Array> = []
  let total = 0
  for (const p of payloads) {
    const f = encodePackets(seq, p)
    seq = f.nextSequenceId
    framed.push(f.bytes)
    total += f.bytes.length
  }
  return { bytes: concatBytes(framed, total), nextSequenceId: seq }
}

export interface PacketDecoderOptions {
  /** Largest logical payload accepted (default 1 GiB, MariaDB's max_allowed_packet ceiling). */
  readonly maxPayloadLength?: number
}

/**
 * Incremental deframer: feed arbitrary chunks, get whole logical payloads.
 * Continuation packets must carry consecutive sequence ids. After an error the
 * stream is out of sync: every later `push` fails with the same error.
 */
export class PacketDecoder {
  private readonly maxPayloadLength: number
  private chunks: Array<Uint8Array> = []
  private head = 0 // bytes already consumed from chunks[0]
  private buffered = 0
  private parts: Array<Uint8Array> = []
  private partsLength = 0
  private firstSeq = -1
  private lastSeq = -1
  private failed: PacketError | undefined

  constructor(options: PacketDecoderOptions = {}) {
    this.maxPayloadLength = options.maxPayloadLength ?? 1024 * 1024 * 1024
  }

  /** Bytes received but not yet part of a returned payload. */
  get pendingBytes(): number {
    return this.buffered + this.partsLength
  }

  push(chunk: Uint8Array): Result.Result<ReadonlyArray<Packet>, PacketError> {
    if (this.failed) return Result.fail(this.failed)
    if (chunk.length > 0) {
      this.chunks.push(chunk)
      this.buffered += chunk.length
    }
    const out: Array<Packet> = []
    while (this.buffered >= HEADER_LENGTH) {
      const header = this.peekBytes(HEADER_LENGTH)
      const length = header[0]! | (header[1]! << 8) | (header[2]! << 16)
      const seq = header[3]!
      if (this.partsLength + length > this.maxPayloadLength) {
        return this.fail(err("too-large", `payload exceeds ${this.maxPayloadLength} bytes`))
      }
      if (this.firstSeq >= 0 && seq !== ((this.lastSeq + 1) & 0xff)) {
        return this.fail(err("sequence", `continuation packet has sequence id ${seq}, expected ${(this.lastSeq + 1) & 0xff}`))
      }
      if (this.buffered < HEADER_LENGTH + length) break
      this.take(HEADER_LENGTH)
      const body = this.take(length)
      if (this.firstSeq < 0) this.firstSeq = seq
      this.lastSeq = seq
      this.parts.push(body)
      this.partsLength += length
      if (length === MAX_PACKET_PAYLOAD) continue
      out.push({ sequenceId: this.firstSeq, nextSequenceId: (seq + 1) & 0xff, payload: concatBytes(this.parts, this.partsLength) })
      this.parts = []
      this.partsLength = 0
      this.firstSeq = -1
      this.lastSeq = -1
    }
    return Result.succeed(out)
  }

  private fail(e: PacketError): Result.Result<never, PacketError> {
    this.failed = e
    this.chunks = []
    this.parts = []
    return Result.fail(e)
  }

  private peekBytes(n: number): Uint8Array {
    const first = this.chunks[0]!
    if (first.length - this.head >= n) return first.subarray(this.head, this.head + n)
    const saved = { chunks: this.chunks.slice(), head: this.head, buffered: this.buffered }
    const out = this.take(n)
    this.chunks = saved.chunks
    this.head = saved.head
    this.buffered = saved.buffered
    return out
  }

  /** Removes n buffered bytes (n <= buffered), copying only when they span chunks. */
  private take(n: number): Uint8Array {
    this.buffered -= n
    const first = this.chunks[0]
    if (first !== undefined && first.length - this.head >= n) {
      const view = first.subarray(this.head, this.head + n)
      this.head += n
      if (this.head === first.length) {
        this.chunks.shift()
        this.head = 0
      }
      return view
    }
    const out = new Uint8Array(n)
    let o = 0
    while (o < n) {
      const c = this.chunks[0]!
      const k = Math.min(n - o, c.length - this.head)
      out.set(c.subarray(this.head, this.head + k), o)
      o += k
      this.head += k
      if (this.head === c.length) {
        this.chunks.shift()
        this.head = 0
      }
    }
    return out
  }
}

/** The parts as one array (the part itself when there is one); `length` is their total, if known. */
/** The bytes of `parts` after their first `n`, as views (no copy). */
export const bytesAfter = (parts: ReadonlyArray<Uint8Array>, n: number): Array<Uint8Array> => {
  const out: Array<Uint8Array> = []
  for (const p of parts) {
    if (n >= p.length) {
      n -= p.length
      continue
    }
    out.push(n > 0 ? p.subarray(n) : p)
    n = 0
  }
  return out
}

export const concatBytes = (parts: ReadonlyArray<Uint8Array>, length = parts.reduce((n, p) => n + p.length, 0)): Uint8Array => {
  if (parts.length === 1) return parts[0]!
  const out = new Uint8Array(length)
  let o = 0
  for (const p of parts) {
    out.set(p, o)
    o += p.length
  }
  return out
}
