/**
 * Groups a binlog event stream into transactions (MariaDB event groups):
 *
 * - a standalone Gtid (FL_STANDALONE: DDL, XA COMMIT/ROLLBACK of a prepared
 *   XA) and everything up to and including the first Query;
 * - any other Gtid up to and including its Xid, its COMMIT/ROLLBACK Query
 *   (non-transactional engines), or its XA_prepare event (a prepared XA).
 *
 * Format_description, Rotate, Gtid_list, Binlog_checkpoint, Heartbeat, Stop,
 * Incident and Start_encryption are not part of any transaction and come out
 * as separate outputs. Every event keeps its original bytes.
 */
import { Data, Result } from "effect"
import type { Gtid } from "../cluster/gtid.js"
import {
  type BinlogChecksumError,
  type BinlogEvent,
  type BinlogEventError,
  decodeGtid,
  decodeQuery,
  EventType,
  eventTypeName,
  parseEvent,
  statementKind
} from "./event.js"

export type TransactionKind = "xid" | "commit-query" | "xa-prepare" | "standalone"

export interface Transaction {
  readonly _tag: "Transaction"
  readonly gtid: Gtid
  /** The Gtid event's flags2 (GtidFlag). */
  readonly gtidFlags: number
  readonly kind: TransactionKind
  /** The original event bytes, Gtid first, terminator last. */
  readonly events: ReadonlyArray<Uint8Array>
  /** log_pos of the last event: where the transaction ends in its file. */
  readonly endLogPos: number
}

/** An event outside any transaction (FDE, Rotate, Gtid_list, checkpoint, heartbeat, ...). */
export interface OtherEvent {
  readonly _tag: "OtherEvent"
  readonly event: BinlogEvent
  readonly bytes: Uint8Array
}

export type AssemblerOutput = Transaction | OtherEvent

export class TransactionSequenceError extends Data.TaggedError("TransactionSequenceError")<{
  /**
   * no-gtid: a transaction event with no open Gtid (e.g. an Xid alone);
   * unterminated: a Gtid or a non-transaction event arrived while a group was
   * open (the group was cut, e.g. by a crash); unexpected-event: an event that
   * cannot occur in this kind of group; incomplete: input ended inside a group.
   */
  readonly reason: "no-gtid" | "unterminated" | "unexpected-event" | "incomplete"
  readonly type: number
  readonly logPos: number
  readonly message: string
}> {}

export type AssemblerError = BinlogEventError | BinlogChecksumError | TransactionSequenceError

const OUTSIDE_TRANSACTIONS: ReadonlySet<number> = new Set([
  EventType.FormatDescription,
  EventType.Rotate,
  EventType.GtidList,
  EventType.BinlogCheckpoint,
  EventType.Heartbeat,
  EventType.Stop,
  EventType.Incident,
  EventType.StartEncryption
])

interface Open {
  readonly gtid: Gtid
  readonly flags: number
  readonly standalone: boolean
  readonly events: Array<Uint8Array>
}

/**
 * Incremental grouping. `push` returns what the event completed (nothing, one
 * transaction, or the event itself when it is outside transactions). On an
 * error the open group is dropped and the offending event is not consumed,
 * so the caller may stop or carry on with the next event.
 */
export class TransactionAssembler {
  private open: Open | undefined = undefined

  constructor(private readonly options: { readonly checksum: boolean }) {}

  /** Whether a transaction has started and not yet ended. */
  get pending(): boolean {
    return this.open !== undefined
  }

  /**
   * The open transaction's events so far, handed out and no longer held here (its later
   * events, and its end, come as usual): how a large transaction leaves in parts.
   */
  takeOpen(): { readonly gtid: Gtid; readonly events: ReadonlyArray<Uint8Array> } | undefined {
    if (this.open === undefined) return undefined
    return { gtid: this.open.gtid, events: this.open.events.splice(0) }
  }

  /** Drops a partly assembled transaction (e.g. after a reconnect). */
  reset(): void {
    this.open = undefined
  }

  push(bytes: Uint8Array): Result.Result<ReadonlyArray<AssemblerOutput>, AssemblerError> {
    const parsed = parseEvent(bytes, { checksum: this.options.checksum })
    if (Result.isFailure(parsed)) return Result.fail(parsed.failure)
    return this.pushEvent(parsed.success, bytes)
  }

  /** For callers that already parsed `bytes` into `event`. */
  pushEvent(event: BinlogEvent, bytes: Uint8Array): Result.Result<ReadonlyArray<AssemblerOutput>, AssemblerError> {
    const { type, logPos } = event.header
    const error = (reason: TransactionSequenceError["reason"], message: string) => {
      this.open = undefined
      return Result.fail(new TransactionSequenceError({ reason, type, logPos, message: `${message} (log_pos ${logPos})` }))
    }
    const open = this.open

    // Idle heartbeats carry no data: harmless anywhere.
    if (type === EventType.Heartbeat) return Result.succeed([{ _tag: "OtherEvent", event, bytes }])
    if (OUTSIDE_TRANSACTIONS.has(type)) {
      if (open !== undefined) return error("unterminated", `${eventTypeName(type)} inside transaction ${gtidText(open.gtid)}`)
      return Result.succeed([{ _tag: "OtherEvent", event, bytes }])
    }
    if (type === EventType.Gtid) {
      if (open !== undefined) return error("unterminated", `Gtid while transaction ${gtidText(open.gtid)} is open`)
      const gtid = decodeGtid(event)
      if (Result.isFailure(gtid)) return Result.fail(gtid.failure)
      this.open = { gtid: gtid.success.gtid, flags: gtid.success.flags, standalone: gtid.success.standalone, events: [bytes] }
      return Result.succeed([])
    }
    if (open === undefined) return error("no-gtid", `${eventTypeName(type)} outside any transaction`)

    const kind = terminates(open, event)
    if (Result.isFailure(kind)) {
      this.open = undefined
      return Result.fail(kind.failure)
    }
    if (kind.success === "unexpected") {
      return error("unexpected-event", `${eventTypeName(type)} in standalone group ${gtidText(open.gtid)}`)
    }
    open.events.push(bytes)
    if (kind.success === undefined) return Result.succeed([])
    this.open = undefined
    return Result.succeed([{
      _tag: "Transaction",
      gtid: open.gtid,
      gtidFlags: open.flags,
      kind: kind.success,
      events: open.events,
      endLogPos: logPos
    }])
  }
}

const gtidText = (g: Gtid) => `${g.domain}-${g.server}-${g.seq}`

/** The kind of transaction `event` ends, undefined if it does not end it. */
const terminates = (
  open: Open,
  event: BinlogEvent
): Result.Result<TransactionKind | "unexpected" | undefined, BinlogEventError> => {
  const type = event.header.type
  if (open.standalone) {
    if (type === EventType.Query || type === EventType.QueryCompressed) return Result.succeed("standalone")
    return Result.succeed(type === EventType.Xid || type === EventType.XaPrepare ? "unexpected" : undefined)
  }
  if (type === EventType.Xid) return Result.succeed("xid")
  if (type === EventType.XaPrepare) return Result.succeed("xa-prepare")
  // COMMIT is never compressed (shorter than log_bin_compress_min_len's minimum of 10).
  if (type !== EventType.Query) return Result.succeed(undefined)
  return Result.map(decodeQuery(event), (q) => {
    const k = statementKind(q.sql)
    return k === "commit" || k === "rollback" || k === "xa-commit" || k === "xa-rollback" ? "commit-query" : undefined
  })
}

/** Groups a whole sequence; fails if it ends inside a transaction. */
export const groupTransactions = (
  events: Iterable<Uint8Array>,
  options: { readonly checksum: boolean }
): Result.Result<ReadonlyArray<AssemblerOutput>, AssemblerError> => {
  const assembler = new TransactionAssembler(options)
  const out: Array<AssemblerOutput> = []
  let last: Uint8Array | undefined
  for (const bytes of events) {
    const r = assembler.push(bytes)
    if (Result.isFailure(r)) return r
    out.push(...r.success)
    last = bytes
  }
  if (assembler.pending) {
    const logPos = last !== undefined && last.length >= 17 ? new DataView(last.buffer, last.byteOffset).getUint32(13, true) : 0
    return Result.fail(
      new TransactionSequenceError({ reason: "incomplete", type: last?.[4] ?? 0, logPos, message: "input ended inside a transaction" })
    )
  }
  return Result.succeed(out)
}
