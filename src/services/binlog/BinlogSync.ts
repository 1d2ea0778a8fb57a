/**
 * The master's commit path (docs/architecture.md, "Parts"; docs/commit-path.md): the capture client reads the local
 * MariaDB's binlog as its only semi-sync replica; whole transactions are batched into
 * Binlog entries (group commit: everything that arrived while the previous proposal was
 * in flight) and proposed; a transaction is ACKed to MariaDB only once its entry is chosen
 * AND accepted by the state machine. A rejected entry is never ACKed: the pipeline fails
 * and the master steps down.
 */
import { Cause, Context, Data, Effect, Exit, Fiber, Layer, Option, Queue, Semaphore, Stream } from "effect"
import { type BinlogTxn, type Outcome, type RejectReason, txnDigest } from "../../domain/cluster/cluster.js"
import type { ProposeError } from "../../domain/paxos/errors.js"
import { concatBytes } from "../../domain/mysql/packet.js"
import { formatGtid, type Gtid } from "../../domain/cluster/gtid.js"
import { CommitPathHistograms } from "../../domain/metrics/histogram.js"
import * as BinlogCapture from "./BinlogCapture.js"
import { ClusterState, type ProposeTiming } from "../cluster/ClusterState.js"

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
  /** Binlog entries in flight at once; default 4. */
  readonly pipelineDepth?: number
  /**
   * A transaction larger than this goes into the log as parts of about this size, each
   * proposed as soon as MariaDB has sent it, then the entry completing it; default 2 MiB.
   */
  readonly partBytes?: number
  /** Where each committed transaction's stage timings go. */
  readonly commitPath?: CommitPathHistograms
}


/** Runs until interrupted (step-down) or until the cluster rejects an entry, or capture fails for good. */
export const run = (options: BinlogSyncOptions) =>
  Effect.gen(function*() {
    const cluster = yield* ClusterState
    const partBytes = options.partBytes ?? DEFAULT_PART_BYTES
    // Parts held between MariaDB and the log, by bytes: a large transaction costs a few
    // parts of memory here, whatever its size.
    const permits = Math.ceil((PARTS_HELD * partBytes) / 1024)
    const partBudget: BinlogCapture.PartBudget = { semaphore: Semaphore.makeUnsafe(permits), permits }
    const capture = yield* BinlogCapture.make({ ...options.capture, startAfter: options.startAfter, partBytes, partBudget })
    const maxTxns = options.maxBatchTxns ?? 512
    const maxBytes = options.maxBatchBytes ?? 4 * 1024 * 1024
    // Bounded: a slow log slows the reader, and MariaDB holds the commits meanwhile.
    const queue = yield* Queue.bounded<BinlogCapture.CapturedTxn | BinlogCapture.CapturedPart>(4 * maxTxns)
    const reader = capture.captured.pipe(Stream.runForEachArray((ts) => Queue.offerAll(queue, ts)))

    const depth = options.pipelineDepth ?? 4
    /** The last GTID ACKed: every entry before it was accepted. */
    let prev = options.startAfter
    /** First GTID of the entry last proposed again after a failure. */
    let retried: string | undefined
    /** Entries to propose again, unchanged, before anything new (after a failure). */
    const again: Array<ReadonlyArray<Staged>> = []
    /** Captured, not yet in a proposal, in binlog order. */
    const pending: Array<Staged> = []
    /** Proposals in flight, in binlog order; each one's prevGtid is the previous one's last GTID. */
    const inflight: Array<{
      readonly source: ReadonlyArray<Staged>
      readonly first: string
      readonly fiber: Fiber.Fiber<Outcome, ProposeError>
      readonly proposedAt: number
      readonly timing: ProposeTiming
    }> = []
    const take = (min: number) =>
      Effect.map(Queue.takeBetween(queue, min, maxTxns), (more) => {
        for (const c of more) {
          pending.push(
            "part" in c
              ? { part: c, size: c.bytes.length }
              : { txn: c, size: c.events.reduce((n, e) => n + e.length, 0), events: concatBytes(c.events) }
          )
        }
      })
    /** A settled part's bytes leave this pipeline. */
    const releaseParts = (source: ReadonlyArray<Staged>) =>
      Effect.forEach(
        source,
        (p) => (p.part !== undefined ? partBudget.semaphore.release(BinlogCapture.partPermits(p.part, partBudget)) : Effect.void),
        { discard: true }
      )

    /** Starts proposals while there is captured data and room in the pipeline. */
    const fill = Effect.gen(function*() {
      // Parts are pipelined like entries (up to `depth` in flight): proposed in order, they
      // take the log's instances in order, and a failure re-proposes everything from the
      // first unsettled one, in order (the state machine takes a part it already has as a
      // retry). A part goes alone in its proposal.
      while (inflight.length < depth && (again.length > 0 || pending.length > 0)) {
        let source: ReadonlyArray<Staged>
        if (again.length > 0) {
          source = again.shift()!
        } else if (pending[0]!.part !== undefined) {
          source = pending.splice(0, 1)
        } else {
          // A batch of whole transactions; one completing a large transaction only first.
          let n = 0
          let bytes = 0
          while (
            n < pending.length && n < maxTxns && pending[n]!.part === undefined &&
            (n === 0 || (pending[n]!.txn!.parts === undefined && bytes + pending[n]!.size <= maxBytes))
          ) {
            bytes += pending[n++]!.size
          }
          source = pending.splice(0, n)
        }
        const timing: ProposeTiming = { chosenAt: 0, appliedAt: 0 }
        const proposedAt = performance.now()
        const head = source[0]!
        let proposal: Effect.Effect<Outcome, ProposeError>
        if (head.part !== undefined) {
          const { gtid, part, bytes } = head.part
          proposal = cluster.propose({ _tag: "BinlogPart", node: options.node, epoch: options.epoch, gtid, part, bytes })
        } else {
          // After the last whole transaction in flight (parts ahead belong to this entry's transaction).
          const before = inflight.findLast((p) => p.source[0]!.part === undefined)?.source
          const prevGtid = before !== undefined ? before[before.length - 1]!.txn!.gtid : prev
          const txns = source.map((p): BinlogTxn => {
            const txn: BinlogTxn = {
              gtid: p.txn!.gtid,
              events: p.events!,
              ...(p.txn!.parts !== undefined ? { parts: p.txn!.parts } : {})
            }
            return { ...txn, digest: txnDigest(txn) }
          })
          proposal = cluster.propose({ _tag: "Binlog", node: options.node, epoch: options.epoch, prevGtid, txns }, timing)
        }
        const fiber = yield* Effect.forkChild(proposal)
        // Names the proposal for the retry-once rule: each part apart from the others.
        const first = head.part !== undefined ? `${formatGtid(head.part.gtid)} part ${head.part.part}` : formatGtid(head.txn!.gtid)
        inflight.push({ source, first, fiber, proposedAt, timing })
      }
    })

    const step = Effect.gen(function*() {
      if (inflight.length === 0) {
        if (pending.length === 0 && again.length === 0) yield* take(1)
        return yield* fill
      }
      // Whichever comes first: the oldest proposal's outcome, or more transactions to propose.
      const head = inflight[0]!
      const done = yield* Effect.raceFirst(
        Effect.map(Fiber.await(head.fiber), (exit) => ({ exit })),
        inflight.length < depth ? Effect.as(take(1), undefined) : Effect.never
      )
      if (done === undefined) return yield* fill
      inflight.shift()
      if (Exit.isSuccess(done.exit) && done.exit.value._tag !== "Rejected") {
        if (head.source[0]!.part !== undefined) {
          // In the log; nothing to ACK until the entry completing the transaction is.
          yield* releaseParts(head.source)
          return yield* fill
        }
        const last = head.source[head.source.length - 1]!.txn!
        yield* capture.ack(last.file, last.endPos)
        options.commitPath?.recordEntry(
          head.source.map((p) => p.txn!.capturedAt),
          { proposed: head.proposedAt, chosen: head.timing.chosenAt, applied: head.timing.appliedAt, acked: performance.now() },
          head.source.reduce((n, p) => n + p.size, 0)
        )
        prev = last.gtid
        return yield* fill
      }
      if (Exit.isSuccess(done.exit) && done.exit.value._tag === "Rejected") {
        const reason = done.exit.value.reason
        // A GTID mismatch can come from our own pipeline (entries reaching the log out of
        // order): retried once from here. Anything else, or the same again, is the cluster's
        // answer: never ACKed, and this master steps down.
        if ((reason._tag !== "GtidMismatch" && reason._tag !== "GtidGap" && reason._tag !== "PartOutOfOrder") || retried === head.first) {
          yield* Effect.forEach(inflight, (p) => Fiber.interrupt(p.fiber), { discard: true })
          return yield* new BinlogSyncRejected({ first: head.first, reason })
        }
      }
      // A value the log can never take: retrying would only hang the pipeline.
      if (Exit.isFailure(done.exit)) {
        const error = Cause.findErrorOption(done.exit.cause)
        if (Option.isSome(error) && error.value._tag === "ValueTooLarge") {
          yield* Effect.forEach(inflight, (p) => Fiber.interrupt(p.fiber), { discard: true })
          return yield* Effect.fail(error.value)
        }
      }
      retried = head.first
      // No answer (timeout, no majority): let the rest settle, then propose all of it again
      // in order. A retry of an entry that was chosen after all is recognised as already
      // accepted, so nothing is applied twice and nothing unaccepted is ACKed.
      yield* Effect.forEach(inflight, (p) => Fiber.await(p.fiber), { discard: true })
      // The same entries as before: one that was chosen after all is then recognised as
      // already accepted (a merged entry would straddle lastGtid and be rejected).
      again.push(head.source, ...inflight.map((p) => p.source))
      inflight.length = 0
      yield* Effect.sleep("50 millis")
      yield* fill
    })
    const proposer = step.pipe(Effect.forever)

    return yield* Effect.raceFirst(reader.pipe(Effect.andThen(Effect.never)), proposer)
  }).pipe(Effect.scoped)

/** Bytes of a large transaction a part at a time; the parts held at most between MariaDB and the log. */
const DEFAULT_PART_BYTES = 2 * 1024 * 1024
const PARTS_HELD = 4

/** Captured and waiting to be proposed: a whole transaction (events joined) or a large one's part. */
interface Staged {
  readonly txn?: BinlogCapture.CapturedTxn
  readonly events?: Uint8Array
  readonly part?: BinlogCapture.CapturedPart
  readonly size: number
}

/** Where the master's commit path records its stage timings (shown in /status). */
export class CommitPath extends Context.Service<CommitPath, CommitPathHistograms>()("phxmaria/CommitPath") {}

export const commitPathLayer: Layer.Layer<CommitPath> = Layer.sync(CommitPath, () => new CommitPathHistograms())
