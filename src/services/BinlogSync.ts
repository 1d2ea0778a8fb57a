/**
 * The master's commit path (DESIGN.md section 3): the capture client reads the local
 * MariaDB's binlog as its only semi-sync replica; whole transactions are batched into
 * Binlog entries (group commit: everything that arrived while the previous proposal was
 * in flight) and proposed; a transaction is ACKed to MariaDB only once its entry is chosen
 * AND accepted by the state machine. A rejected entry is never ACKed: the pipeline fails
 * and the master steps down.
 */
import { Data, Effect, Queue, Schedule, Stream } from "effect"
import type { BinlogTxn, RejectReason } from "../domain/cluster.js"
import { formatGtid, type Gtid } from "../domain/gtid.js"
import * as BinlogCapture from "./BinlogCapture.js"
import { ClusterState } from "./ClusterState.js"

export class BinlogSyncRejected extends Data.TaggedError("BinlogSyncRejected")<{
  readonly first: string
  readonly reason: RejectReason
}> {
  override get message() {
    return `binlog entry from ${this.first} rejected by the cluster: ${this.reason._tag} (never ACKed)`
  }
}

export interface BinlogSyncOptions {
  readonly capture: Omit<BinlogCapture.CaptureOptions, "startAfter">
  readonly node: number
  readonly epoch: number
  /** The cluster's lastGtid when this master started: capture resumes after it. */
  readonly startAfter: Gtid | null
  /** Bounds on one entry; default 512 transactions, 4 MiB (one transaction may exceed it). */
  readonly maxBatchTxns?: number
  readonly maxBatchBytes?: number
  /** Called after each ACK with the last acknowledged GTID. */
  readonly onAcked?: (gtid: Gtid, count: number) => Effect.Effect<void>
}

const concat = (parts: ReadonlyArray<Uint8Array>): Uint8Array => {
  let size = 0
  for (const p of parts) size += p.length
  const out = new Uint8Array(size)
  let at = 0
  for (const p of parts) {
    out.set(p, at)
    at += p.length
  }
  return out
}

/** Runs until interrupted (step-down) or until the cluster rejects an entry, or capture fails for good. */
export const run = (options: BinlogSyncOptions) =>
  Effect.gen(function*() {
    const cluster = yield* ClusterState
    const capture = yield* BinlogCapture.make({ ...options.capture, startAfter: options.startAfter })
    const maxTxns = options.maxBatchTxns ?? 512
    const maxBytes = options.maxBatchBytes ?? 4 * 1024 * 1024
    // Bounded: a slow log slows the reader, and MariaDB holds the commits meanwhile.
    const queue = yield* Queue.bounded<BinlogCapture.CapturedTxn>(4 * maxTxns)
    const reader = capture.transactions.pipe(Stream.runForEach((t) => Queue.offer(queue, t)))

    let prev = options.startAfter
    /** Taken from the queue, not yet proposed (what did not fit the last entry), in order. */
    const pending: Array<{ readonly txn: BinlogCapture.CapturedTxn; readonly events: Uint8Array }> = []
    const proposer = Effect.gen(function*() {
      const more = yield* Queue.takeBetween(queue, pending.length === 0 ? 1 : 0, maxTxns - pending.length)
      for (const txn of more) pending.push({ txn, events: concat(txn.events) })
      let n = 0
      let bytes = 0
      while (n < pending.length && (n === 0 || bytes + pending[n]!.events.length <= maxBytes)) bytes += pending[n++]!.events.length
      const source = pending.splice(0, n)
      const batch: Array<BinlogTxn> = source.map((p) => ({ gtid: p.txn.gtid, events: p.events }))
      const entry = { _tag: "Binlog" as const, node: options.node, epoch: options.epoch, prevGtid: prev, txns: batch }
      // A timeout leaves the outcome unknown: the same entry again is recognised as already
      // accepted if the first one was chosen, so retrying can never apply it twice.
      const outcome = yield* cluster.propose(entry).pipe(
        // No majority or no answer yet: the commit waits (held by MariaDB) until there is one.
        Effect.retry(Schedule.spaced("50 millis"))
      )
      if (outcome._tag === "Rejected") {
        return yield* new BinlogSyncRejected({ first: formatGtid(batch[0]!.gtid), reason: outcome.reason })
      }
      const last = source[source.length - 1]!.txn
      yield* capture.ack(last.file, last.endPos)
      prev = last.gtid
      if (options.onAcked !== undefined) yield* options.onAcked(last.gtid, source.length)
    }).pipe(Effect.forever)

    return yield* Effect.raceFirst(reader.pipe(Effect.andThen(Effect.never)), proposer)
  }).pipe(Effect.scoped)
