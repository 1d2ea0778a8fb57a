/**
 * Frames of the Paxos write-ahead log: `u32 LE payload length, u32 LE CRC-32 of the
 * payload, payload` where the payload is one msgpack value. Segments are zero-filled
 * before use, so a zero length marks where the log ends; a frame whose checksum does not
 * match (a write torn by a crash) ends it too. Pure: the storage service does the I/O.
 */
import { Result } from "effect"
import { crc32 } from "../binlog/crc32.js"
import { decodePayload } from "../wire/frame.js"
import { packScatter, type Scattered } from "../wire/scatter.js"

export const WAL_FRAME_HEADER = 8

/**
 * One frame for `value`, as ranges for a vectored write (a large value is not copied:
 * scatter.ts), the header in the room left for it. Throws TypeError for what msgpack
 * cannot hold.
 */
export const encodeWalFrame = (value: unknown): Scattered => {
  const frame = packScatter(value, WAL_FRAME_HEADER)
  const first = frame.parts[0]!
  let crc = crc32(first.subarray(WAL_FRAME_HEADER))
  for (let i = 1; i < frame.parts.length; i++) crc = crc32(frame.parts[i]!, crc)
  const header = new DataView(first.buffer, first.byteOffset, WAL_FRAME_HEADER)
  header.setUint32(0, frame.length - WAL_FRAME_HEADER, true)
  header.setUint32(4, crc, true)
  return frame
}

export interface WalFrame {
  /** Offset of the frame (its header) in the scanned bytes. */
  readonly offset: number
  /** Header plus payload. */
  readonly length: number
  readonly value: unknown
}

/** The frame at `offset`, or undefined where the log ends (zeros, a torn or bad frame, the end). */
export const readWalFrame = (bytes: Uint8Array, offset: number): WalFrame | undefined => {
  if (offset + WAL_FRAME_HEADER > bytes.length) return undefined
  const v = new DataView(bytes.buffer, bytes.byteOffset + offset, WAL_FRAME_HEADER)
  const length = v.getUint32(0, true)
  if (length === 0 || offset + WAL_FRAME_HEADER + length > bytes.length) return undefined
  const payload = bytes.subarray(offset + WAL_FRAME_HEADER, offset + WAL_FRAME_HEADER + length)
  if (crc32(payload) !== v.getUint32(4, true)) return undefined
  const value = decodePayload(payload)
  if (Result.isFailure(value)) return undefined
  return { offset, length: WAL_FRAME_HEADER + length, value: value.success }
}

/** Every frame from `offset` on, in order, up to where the log ends; and that end. */
export const scanWalFrames = (bytes: Uint8Array, offset = 0): { readonly frames: ReadonlyArray<WalFrame>; readonly end: number } => {
  const frames: Array<WalFrame> = []
  let at = offset
  for (;;) {
    const f = readWalFrame(bytes, at)
    if (f === undefined) return { frames, end: at }
    frames.push(f)
    at += f.length
  }
}
