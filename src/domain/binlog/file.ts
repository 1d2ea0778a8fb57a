/**
 * A binlog file: the magic 0xFE 'b' 'i' 'n', a Format_description event
 * (whose last body byte says whether the other events carry a CRC32), then
 * events back to back.
 */
import { Data, Result } from "effect"
import {
  type BinlogEvent,
  ChecksumAlg,
  decodeFormatDescription,
  EventType,
  type FormatDescription,
  HEADER_LENGTH,
  parseEvent
} from "./event.js"

export const BINLOG_MAGIC: Uint8Array = Uint8Array.of(0xfe, 0x62, 0x69, 0x6e)

export interface FileEvent {
  /** Where the event starts in the file. */
  readonly offset: number
  /** The original bytes (a view into the file's buffer). */
  readonly bytes: Uint8Array
  readonly event: BinlogEvent
}

export interface BinlogFile {
  readonly formatDescription: FormatDescription
  /** Whether the events after the FDE carry a CRC32 trailer. */
  readonly checksum: boolean
  /** Every event, the FDE first. */
  readonly events: ReadonlyArray<FileEvent>
  /** Bytes of an incomplete last event (a file still being written); 0 otherwise. */
  readonly truncatedTail: number
}

export class BinlogFileError extends Data.TaggedError("BinlogFileError")<{
  readonly reason: "bad-magic" | "no-format-description" | "unsupported" | "bad-event" | "truncated"
  readonly offset: number
  readonly message: string
  readonly cause?: unknown
}> {}

export interface ParseFileOptions {
  /** Accept an incomplete last event (report it as truncatedTail) instead of failing. */
  readonly allowTruncatedTail?: boolean | undefined
  /** Verify CRCs; defaults to true. */
  readonly verify?: boolean | undefined
}

export const parseBinlogFile = (
  bytes: Uint8Array,
  options: ParseFileOptions = {}
): Result.Result<BinlogFile, BinlogFileError> => {
  const error = (reason: BinlogFileError["reason"], offset: number, message: string, cause?: unknown) =>
    Result.fail(new BinlogFileError({ reason, offset, message, cause }))
  if (bytes.length < BINLOG_MAGIC.length || BINLOG_MAGIC.some((b, i) => bytes[i] !== b)) {
    return error("bad-magic", 0, "not a binlog file (magic 0xFE 'bin' missing)")
  }
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const events: Array<FileEvent> = []
  let formatDescription: FormatDescription | undefined
  let checksum = false
  let offset = BINLOG_MAGIC.length
  while (offset < bytes.length) {
    const left = bytes.length - offset
    const size = left >= HEADER_LENGTH ? v.getUint32(offset + 9, true) : undefined
    if (size === undefined || size > left) {
      if (options.allowTruncatedTail === true) return finish(left)
      return error("truncated", offset, `incomplete event at ${offset}: ${left} bytes left`)
    }
    // event_size below the header length would never advance: reject before slicing
    if (size < HEADER_LENGTH) return error("bad-event", offset, `event_size ${size} at ${offset}`)
    const slice = bytes.subarray(offset, offset + size)
    const isFde = slice[4] === EventType.FormatDescription
    if (formatDescription === undefined && !isFde) {
      return error("no-format-description", offset, "the first event is not a Format_description event")
    }
    if (slice[4] === EventType.StartEncryption) return error("unsupported", offset, "encrypted binlog")
    const parsed = parseEvent(slice, { checksum, verify: options.verify })
    if (Result.isFailure(parsed)) return error("bad-event", offset, `event at ${offset}: ${parsed.failure.message}`, parsed.failure)
    if (isFde) {
      const fde = decodeFormatDescription(parsed.success)
      if (Result.isFailure(fde)) return error("bad-event", offset, fde.failure.message, fde.failure)
      const alg = fde.success.checksumAlg
      if (fde.success.headerLength !== HEADER_LENGTH || (alg !== ChecksumAlg.Off && alg !== ChecksumAlg.Crc32)) {
        return error("unsupported", offset, `header length ${fde.success.headerLength}, checksum algorithm ${alg}`)
      }
      formatDescription = fde.success
      checksum = alg === ChecksumAlg.Crc32
    }
    events.push({ offset, bytes: slice, event: parsed.success })
    offset += size
  }
  return finish(0)

  function finish(truncatedTail: number): Result.Result<BinlogFile, BinlogFileError> {
    if (formatDescription === undefined) return error("no-format-description", BINLOG_MAGIC.length, "no Format_description event")
    return Result.succeed({ formatDescription, checksum, events, truncatedTail })
  }
}
