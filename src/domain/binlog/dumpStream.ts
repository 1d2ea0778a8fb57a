/**
 * The events a binlog server sends on one COM_BINLOG_DUMP: transactions from anywhere,
 * laid out as one continuous virtual binlog file (docs/mariadb.md, "Replication
 * protocol, master side"). Original bytes are kept; only log_pos is rewritten and the CRC carried over it.
 */
import { Result } from "effect"
import type { Gtid } from "../cluster/gtid.js"
import {
  type BinlogChecksumError,
  BinlogEventError,
  CHECKSUM_LENGTH,
  EventFlag,
  EventType,
  makeFakeRotate,
  makeGtidList,
  HEADER_LENGTH,
  makeHeartbeat,
  moveEventHeader,
  parseEvent,
  recomputeChecksum,
  serializeEvent,
  withLogPos
} from "./event.js"

/** Offset of create_timestamp in a Format_description body (after binlog_version and server_version). */
const FDE_CREATE_TIMESTAMP = 52
const BINLOG_START = 4
/** MySQL packets: a 4-byte header, payloads below 2^24 - 1 bytes fit in one. */
const PACKET_HEADER = 4
const MAX_PACKET_PAYLOAD = 0xffffff
/** Events this large are sent from their own memory (a range of the write), smaller ones copied. */
const BODY_BY_REFERENCE = 64 * 1024

export class DumpStream {
  /** End offset of the last event sent, in the virtual file. */
  private position = BINLOG_START

  constructor(
    private readonly options: {
      readonly fileName: string
      readonly serverId: number
    }
  ) {}

  get logPos(): number {
    return this.position
  }

  /**
   * What opens the stream: a fake Rotate to the virtual file, the source's
   * Format_description (required by the replica), the Gtid_list of the file's start and an
   * artificial Gtid_list holding the replica's connect state.
   */
  opening(formatDescription: Uint8Array, connectState: ReadonlyArray<Gtid>): Result.Result<ReadonlyArray<Uint8Array>, BinlogEventError | BinlogChecksumError> {
    const fde = parseEvent(formatDescription, { checksum: true })
    if (Result.isFailure(fde)) return Result.fail(fde.failure)
    if (fde.success.header.type !== EventType.FormatDescription) {
      return Result.fail(new BinlogEventError({ reason: "wrong-type", message: "a dump stream needs the source's Format_description event" }))
    }
    const { serverId, fileName } = this.options
    const rotate = makeFakeRotate({ fileName, position: BINLOG_START, serverId })
    const body = Uint8Array.from(fde.success.body)
    // created 0: not "the master just started" (which would make the replica drop temp tables).
    new DataView(body.buffer).setUint32(FDE_CREATE_TIMESTAMP, 0, true)
    const fdeLength = formatDescription.length
    this.position = BINLOG_START + fdeLength
    const fdeOut = serializeEvent(recomputeChecksum({
      header: { ...fde.success.header, logPos: this.position, flags: 0 },
      body,
      checksum: 0
    }))
    const listLength = makeGtidList({ gtids: [], serverId, logPos: 0 }).length
    this.position += listLength
    const list = makeGtidList({ gtids: [], serverId, logPos: this.position })
    const connect = makeGtidList({ gtids: connectState, serverId, logPos: 0, flags: EventFlag.Artificial })
    return Result.succeed([rotate, fdeOut, list, connect])
  }

  /** A transaction's events, each placed after the previous one in the virtual file. */
  transaction(events: ReadonlyArray<Uint8Array>): Result.Result<ReadonlyArray<Uint8Array>, BinlogEventError | BinlogChecksumError> {
    const out: Array<Uint8Array> = []
    let position = this.position
    for (const e of events) {
      position += e.length
      const moved = withLogPos(e, position)
      if (Result.isFailure(moved)) return Result.fail(moved.failure)
      out.push(moved.success)
    }
    this.position = position
    return Result.succeed(out)
  }

  /**
   * The same, framed as replication packets (0x00 and the event, sequence ids from `seq`),
   * as byte ranges for one corked write: headers, trailers and small events are copied into
   * one buffer, the body of an event of BODY_BY_REFERENCE bytes or more is a range of its
   * own, the event's own memory (a 1 MiB row is not copied again on every replica). Events
   * too large for one packet are left to {@link transaction} (undefined).
   */
  transactionPackets(
    events: ReadonlyArray<Uint8Array>,
    seq: number
  ): Result.Result<{ readonly parts: ReadonlyArray<Uint8Array>; readonly bytes: number; readonly nextSequenceId: number } | undefined, BinlogEventError | BinlogChecksumError> {
    let copied = 0
    let bytes = 0
    for (const e of events) {
      if (e.length + 1 >= MAX_PACKET_PAYLOAD) return Result.succeed(undefined)
      bytes += PACKET_HEADER + 1 + e.length
      copied += PACKET_HEADER + 1 + (e.length >= BODY_BY_REFERENCE ? HEADER_LENGTH + CHECKSUM_LENGTH : e.length)
    }
    const out = new Uint8Array(copied)
    const parts: Array<Uint8Array> = []
    let at = 0
    let runStart = 0
    let position = this.position
    for (const e of events) {
      const payload = e.length + 1
      out[at] = payload & 0xff
      out[at + 1] = (payload >>> 8) & 0xff
      out[at + 2] = (payload >>> 16) & 0xff
      out[at + 3] = seq
      seq = (seq + 1) & 0xff
      out[at + 4] = 0x00
      at += PACKET_HEADER + 1
      position += e.length
      const checksum = moveEventHeader(e, position, out, at)
      if (Result.isFailure(checksum)) return Result.fail(checksum.failure)
      at += HEADER_LENGTH
      const body = e.subarray(HEADER_LENGTH, e.length - CHECKSUM_LENGTH)
      if (e.length >= BODY_BY_REFERENCE) {
        parts.push(out.subarray(runStart, at), body)
        runStart = at
      } else {
        out.set(body, at)
        at += body.length
      }
      new DataView(out.buffer, out.byteOffset + at, CHECKSUM_LENGTH).setUint32(0, checksum.success, true)
      at += CHECKSUM_LENGTH
    }
    parts.push(out.subarray(runStart, at))
    this.position = position
    return Result.succeed({ parts, bytes, nextSequenceId: seq })
  }

  /** Sent while idle: log_pos is the end of the last event sent. */
  heartbeat(): Uint8Array {
    return makeHeartbeat({ fileName: this.options.fileName, logPos: this.position, serverId: this.options.serverId })
  }
}
