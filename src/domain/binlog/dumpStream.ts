/**
 * The events a binlog server sends on one COM_BINLOG_DUMP: transactions from anywhere,
 * laid out as one continuous virtual binlog file (docs/mariadb.md, "Replication
 * protocol, master side"). Original bytes are kept; only log_pos is rewritten and the CRC recomputed.
 */
import { Result } from "effect"
import type { Gtid } from "../cluster/gtid.js"
import {
  type BinlogChecksumError,
  BinlogEventError,
  EventFlag,
  EventType,
  makeFakeRotate,
  makeGtidList,
  makeHeartbeat,
  parseEvent,
  recomputeChecksum,
  serializeEvent,
  setLogPosInPlace,
  withLogPos
} from "./event.js"

/** Offset of create_timestamp in a Format_description body (after binlog_version and server_version). */
const FDE_CREATE_TIMESTAMP = 52
const BINLOG_START = 4
/** MySQL packets: a 4-byte header, payloads below 2^24 - 1 bytes fit in one. */
const PACKET_HEADER = 4
const MAX_PACKET_PAYLOAD = 0xffffff

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
   * The same, framed as replication packets (0x00 and the event, sequence ids from `seq`)
   * in one buffer: each event is copied once, straight into its packet. Events too large
   * for one packet are left to {@link transaction} (undefined).
   */
  transactionPackets(
    events: ReadonlyArray<Uint8Array>,
    seq: number
  ): Result.Result<{ readonly bytes: Uint8Array; readonly nextSequenceId: number } | undefined, BinlogEventError | BinlogChecksumError> {
    let total = 0
    for (const e of events) {
      if (e.length + 1 >= MAX_PACKET_PAYLOAD) return Result.succeed(undefined)
      total += PACKET_HEADER + 1 + e.length
    }
    const out = new Uint8Array(total)
    let at = 0
    let position = this.position
    for (const e of events) {
      const payload = e.length + 1
      out[at] = payload & 0xff
      out[at + 1] = (payload >>> 8) & 0xff
      out[at + 2] = (payload >>> 16) & 0xff
      out[at + 3] = seq
      seq = (seq + 1) & 0xff
      out[at + 4] = 0x00
      out.set(e, at + 5)
      position += e.length
      const placed = setLogPosInPlace(out.subarray(at + 5, at + 5 + e.length), position)
      if (Result.isFailure(placed)) return Result.fail(placed.failure)
      at += PACKET_HEADER + payload
    }
    this.position = position
    return Result.succeed({ bytes: out, nextSequenceId: seq })
  }

  /** Sent while idle: log_pos is the end of the last event sent. */
  heartbeat(): Uint8Array {
    return makeHeartbeat({ fileName: this.options.fileName, logPos: this.position, serverId: this.options.serverId })
  }
}
