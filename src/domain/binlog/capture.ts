/**
 * The replica side of a binlog dump, as data: event packets in, whole transactions out,
 * with the file and end position to ACK and whether the master waits for that ACK.
 * Pure: the capture service feeds it packet payloads from the socket.
 */
import { Data, Result } from "effect"
import type { Gtid } from "../cluster/gtid.js"
import { concatBytes } from "../mysql/packet.js"
import { decodeRotate, EventFlag, EventType, parseEvent } from "./event.js"
import { type AssemblerError, TransactionAssembler } from "./transaction.js"

export interface CapturedTxn {
  readonly gtid: Gtid
  /** Original event bytes (with CRC32), Gtid event first. */
  readonly events: ReadonlyArray<Uint8Array>
  /** The master's binlog file and the transaction's end position in it: what an ACK names. */
  readonly file: string
  readonly endPos: number
  /** The master holds a commit until this transaction is ACKed (semi-sync). */
  readonly needAck: boolean
  /** When its last event arrived (the caller's monotonic clock, ms): for commit-path timings. */
  readonly capturedAt: number
  /** A large transaction: how many CapturedParts before it hold its leading bytes (`events` is the rest). */
  readonly parts?: number | undefined
}

/**
 * Leading bytes of a large transaction still being read (its events end to end, Gtid event
 * first), handed out as soon as `partBytes` have arrived; the transaction itself follows.
 * A reconnect starts the transaction again from part 0.
 */
export interface CapturedPart {
  readonly gtid: Gtid
  readonly part: number
  readonly bytes: Uint8Array
}

export class DumpPacketError extends Data.TaggedError("DumpPacketError")<{ readonly message: string }> {}

export type CaptureOutput =
  | { readonly _tag: "Txn"; readonly txn: CapturedTxn }
  | { readonly _tag: "Part"; readonly part: CapturedPart }
  /** The master's Format_description event (a binlog server must replay it to its replicas). */
  | { readonly _tag: "FormatDescription"; readonly bytes: Uint8Array }

const SEMI_SYNC_INDICATOR = 0xef

export class CaptureState {
  private file = ""
  private needAck = false
  private readonly assembler = new TransactionAssembler({ checksum: true })
  /** Bytes of the open transaction not yet handed out (`carry` first, then the assembler's), and its parts so far. */
  private openBytes = 0
  private parts = 0
  /** The open transaction's bytes after its last whole part: they start the next part. */
  private carry: Uint8Array | undefined = undefined

  /** `partBytes`: hand out a transaction's leading bytes in parts of about this size (never, when undefined). */
  constructor(private readonly semiSync: boolean, private readonly partBytes?: number) {}

  /** The open transaction ended (or was dropped): nothing of it is held any more. */
  private endOpen(): void {
    this.openBytes = 0
    this.parts = 0
    this.carry = undefined
  }

  get currentFile(): string {
    return this.file
  }

  /**
   * One event packet's payload: 0x00, then (semi-sync) 0xEF and the need-ack byte, then the
   * event. `now` (monotonic ms) stamps the transactions it completes.
   */
  push(payload: Uint8Array, now = 0): Result.Result<ReadonlyArray<CaptureOutput>, DumpPacketError | AssemblerError> {
    if (payload.length < 1 || payload[0] !== 0x00) {
      return Result.fail(new DumpPacketError({ message: `event packet starts with ${payload[0]}, not 0x00` }))
    }
    let offset = 1
    if (this.semiSync) {
      if (payload.length < 3 || payload[1] !== SEMI_SYNC_INDICATOR) {
        return Result.fail(new DumpPacketError({ message: "semi-sync event packet without its 0xEF indicator" }))
      }
      if (payload[2] !== 0) this.needAck = true
      offset = 3
    }
    const bytes = payload.subarray(offset)
    const parsed = parseEvent(bytes, { checksum: true })
    if (Result.isFailure(parsed)) return Result.fail(parsed.failure)
    const event = parsed.success
    const out: Array<CaptureOutput> = []
    if (event.header.type === EventType.Rotate) {
      const rotate = decodeRotate(event)
      if (Result.isFailure(rotate)) return Result.fail(rotate.failure)
      this.file = rotate.success.fileName
    } else if (event.header.type === EventType.FormatDescription && (event.header.flags & EventFlag.Artificial) === 0) {
      out.push({ _tag: "FormatDescription", bytes: Uint8Array.from(bytes) })
    }
    // A small event in a larger read buffer is copied, so that keeping it does not keep the
    // whole buffer alive; a large one (a packet assembled from several reads) is its own.
    const pushed = this.assembler.pushEvent(event, bytes.byteLength * 2 < bytes.buffer.byteLength ? Uint8Array.from(bytes) : bytes)
    if (Result.isFailure(pushed)) {
      this.endOpen()
      return Result.fail(pushed.failure)
    }
    for (const o of pushed.success) {
      if (o._tag !== "Transaction") continue
      out.push({
        _tag: "Txn",
        txn: {
          gtid: o.gtid,
          events: this.carry === undefined ? o.events : [this.carry, ...o.events],
          file: this.file,
          endPos: o.endLogPos,
          needAck: this.needAck,
          capturedAt: now,
          ...(this.parts > 0 ? { parts: this.parts } : {})
        }
      })
      this.needAck = false
      this.endOpen()
    }
    if (this.partBytes !== undefined && this.assembler.pending) {
      this.openBytes += bytes.length
      if (this.openBytes >= this.partBytes) {
        const open = this.assembler.takeOpen()!
        // Whole parts of exactly partBytes, cut within events where need be; the rest is carried.
        const bytes = concatBytes(this.carry === undefined ? open.events : [this.carry, ...open.events])
        let at = 0
        for (; at + this.partBytes <= bytes.length; at += this.partBytes) {
          out.push({ _tag: "Part", part: { gtid: open.gtid, part: this.parts++, bytes: bytes.subarray(at, at + this.partBytes) } })
        }
        this.carry = at < bytes.length ? bytes.slice(at) : undefined
        this.openBytes = bytes.length - at
      }
    }
    return Result.succeed(out)
  }
}
