/**
 * Wire framing for node-to-node (and client) transport connections.
 *
 * A frame is a u32 big-endian payload length followed by that many payload
 * bytes; the payload is one msgpack value. This module is pure: no I/O and no
 * Effect services, so the same code serves the TCP transport, tests and
 * simulations.
 */
import { Data, Result } from "effect"
import { Packr } from "msgpackr"
import { describeCause } from "../describe.js"
import { joinParts, packScatter, type Scattered } from "./scatter.js"

/** Bytes of the length prefix. */
export const FRAME_HEADER_BYTES = 4

/** Default bound on one payload: large enough for a batched Paxos value. */
export const DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024

/** A length prefix announced more bytes than the receiver accepts. */
export class FrameTooLarge extends Data.TaggedError("FrameTooLarge")<{
  readonly length: number
  readonly max: number
}> {
  override get message() {
    return `frame of ${this.length} bytes exceeds the limit of ${this.max} bytes`
  }
}

/** The stream ended in the middle of a frame. */
export class FrameTruncated extends Data.TaggedError("FrameTruncated")<{
  readonly buffered: number
}> {
  override get message() {
    return `stream ended with ${this.buffered} bytes of an incomplete frame`
  }
}

/** A complete payload is not valid msgpack. */
export class FrameDecodeError extends Data.TaggedError("FrameDecodeError")<{
  readonly length: number
  readonly cause: unknown
}> {
  override get message() {
    return `undecodable msgpack payload of ${this.length} bytes: ${describeCause(this.cause)}`
  }
}

/** A value could not be encoded (unsupported type or too large for a u32 prefix). */
export class FrameEncodeError extends Data.TaggedError("FrameEncodeError")<{
  readonly cause: unknown
}> {
  override get message() {
    return `cannot encode frame: ${describeCause(this.cause)}`
  }
}

// The decoder of every payload (frames are encoded by scatter.ts). useRecords: false ->
// plain msgpack maps (no shared record structures that would make a stream stateful);
// moreTypes: false -> only standard types plus msgpackr's built-ins; structuredClone:
// false -> hostile input cannot use the reference/pointer extensions. msgpack bin
// decodes to a Uint8Array.
const packr = new Packr({
  useRecords: false,
  moreTypes: false,
  structuredClone: false,
  mapsAsObjects: true
})

/** Encodes `payload` as msgpack with a length prefix; throws {@link FrameEncodeError}. */
export const encodeFrame = (payload: unknown): Uint8Array => {
  const result = tryEncodeFrame(payload)
  if (Result.isFailure(result)) throw result.failure
  return result.success
}

/**
 * Like {@link encodeFrame} but returns the failure instead of throwing: the frame in one
 * buffer of its exact size (the ranges of {@link tryEncodeFrameParts} joined).
 */
export const tryEncodeFrame = (payload: unknown): Result.Result<Uint8Array, FrameEncodeError> =>
  Result.map(tryEncodeFrameParts(payload), joinParts)

/**
 * Like {@link tryEncodeFrame}, as ranges for a vectored write: large binaries (a
 * transaction's bytes) are not copied (scatter.ts).
 */
export const tryEncodeFrameParts = (payload: unknown): Result.Result<Scattered, FrameEncodeError> => {
  let frame: Scattered
  try {
    frame = packScatter(payload, FRAME_HEADER_BYTES)
  } catch (cause) {
    return Result.fail(new FrameEncodeError({ cause }))
  }
  const payloadLength = frame.length - FRAME_HEADER_BYTES
  if (payloadLength > 0xffffffff) return Result.fail(new FrameEncodeError({ cause: `payload of ${payloadLength} bytes exceeds u32` }))
  const first = frame.parts[0]!
  new DataView(first.buffer, first.byteOffset, FRAME_HEADER_BYTES).setUint32(0, payloadLength)
  return Result.succeed(frame)
}

/** Decodes one msgpack payload; garbage gives {@link FrameDecodeError}, never a throw. */
export const decodePayload = (payload: Uint8Array): Result.Result<unknown, FrameDecodeError> => {
  if (payload.length === 0) {
    return Result.fail(new FrameDecodeError({ length: 0, cause: "empty payload" }))
  }
  // Undecodable bytes are data, not a bug: their errors carry no stack trace. Capturing
  // two (msgpackr's and ours) was most of the cost of rejecting a payload (~9 us -> ~3 us),
  // and nodes reject every chosen value that is not a cluster entry this way.
  const stackTraceLimit = Error.stackTraceLimit
  Error.stackTraceLimit = 0
  try {
    return Result.succeed(packr.unpack(payload))
  } catch (cause) {
    // msgpackr throws Error/RangeError for truncated, trailing or unknown data
    // and a RangeError for pathological nesting (stack overflow).
    return Result.fail(new FrameDecodeError({ length: payload.length, cause }))
  } finally {
    Error.stackTraceLimit = stackTraceLimit
  }
}

/** Outcome of feeding one chunk: complete payloads in order, then possibly a fatal error. */
export interface FramePush {
  readonly frames: ReadonlyArray<Uint8Array>
  readonly error: FrameTooLarge | undefined
}

const noFrames: ReadonlyArray<Uint8Array> = []

/**
 * Incremental frame splitter over arbitrary chunks.
 *
 * Chunks are kept as a list and only the bytes of a frame that spans chunks
 * are copied (once); a frame that fills most of its chunk is returned as a
 * zero-copy subarray of it, a smaller one as a copy (so that it does not keep
 * the chunk alive). So the total work is linear in the input, however it is
 * chunked. A length prefix above `maxFrameBytes` is reported before any of
 * that frame's payload is buffered, and the decoder then stays failed.
 */
export class FrameDecoder {
  private chunks: Array<Uint8Array> = []
  /** Read offset into chunks[0]. */
  private offset = 0
  /** Unread bytes across all chunks. */
  private available = 0
  /** Payload length of the frame being assembled, or -1 while waiting for a header. */
  private expected = -1
  private failure: FrameTooLarge | undefined = undefined

  constructor(private maxFrameBytes: number = DEFAULT_MAX_FRAME_BYTES) {}

  /** Changes the limit for headers not yet read (e.g. small during a handshake). */
  setMaxFrameBytes(max: number): void {
    this.maxFrameBytes = max
  }

  /** Bytes received but not yet returned as a complete frame. */
  get buffered(): number {
    return this.available + (this.expected >= 0 ? FRAME_HEADER_BYTES : 0)
  }

  get failed(): FrameTooLarge | undefined {
    return this.failure
  }

  push(chunk: Uint8Array): FramePush {
    if (this.failure !== undefined) return { frames: noFrames, error: this.failure }
    if (chunk.length > 0) {
      this.chunks.push(chunk)
      this.available += chunk.length
    }
    let frames: Array<Uint8Array> | undefined
    for (;;) {
      if (this.expected < 0) {
        if (this.available < FRAME_HEADER_BYTES) break
        const length = this.readHeader()
        if (length > this.maxFrameBytes) {
          this.failure = new FrameTooLarge({ length, max: this.maxFrameBytes })
          // Drop whatever is buffered: the connection is going to be closed.
          this.chunks = []
          this.offset = 0
          this.available = 0
          return { frames: frames ?? noFrames, error: this.failure }
        }
        this.expected = length
      }
      if (this.available < this.expected) break
      const payload = this.take(this.expected)
      this.expected = -1
      ;(frames ??= []).push(payload)
    }
    return { frames: frames ?? noFrames, error: undefined }
  }

  private readHeader(): number {
    const first = this.chunks[0]!
    if (first.length - this.offset >= FRAME_HEADER_BYTES) {
      const o = this.offset
      const length = ((first[o]! << 24) >>> 0) + (first[o + 1]! << 16) + (first[o + 2]! << 8) + first[o + 3]!
      this.advance(FRAME_HEADER_BYTES)
      return length
    }
    const header = this.take(FRAME_HEADER_BYTES)
    return ((header[0]! << 24) >>> 0) + (header[1]! << 16) + (header[2]! << 8) + header[3]!
  }

  /** Skips n bytes that are all inside chunks[0]. */
  private advance(n: number): void {
    this.offset += n
    this.available -= n
    if (this.offset === this.chunks[0]!.length) {
      this.chunks.shift()
      this.offset = 0
    }
  }

  /** Removes n (<= available) bytes from the front. */
  private take(n: number): Uint8Array {
    const first = this.chunks[0]
    if (n === 0) return new Uint8Array(0)
    if (first!.length - this.offset >= n) {
      const view = first!.subarray(this.offset, this.offset + n)
      this.advance(n)
      // A frame much smaller than its chunk is copied: whatever is kept from it (a value in
      // a log window) would otherwise keep the whole chunk alive.
      return n * 2 < first!.length ? Uint8Array.prototype.slice.call(view) : view
    }
    const out = Buffer.allocUnsafe(n)
    let written = 0
    let consumed = 0
    while (written < n) {
      const chunk = this.chunks[consumed]!
      const start = consumed === 0 ? this.offset : 0
      const count = Math.min(chunk.length - start, n - written)
      out.set(chunk.subarray(start, start + count), written)
      written += count
      if (start + count === chunk.length) {
        consumed++
        this.offset = 0
      } else {
        this.offset = start + count
      }
    }
    // One splice per frame keeps the chunk list short without per-chunk shifts.
    if (consumed > 0) this.chunks.splice(0, consumed)
    this.available -= n
    return out
  }
}
