/**
 * The chosen log's binlog transactions as a {@link BinlogSource}: what this node's binlog
 * server streams to its own MariaDB replica. Only chosen AND accepted transactions are
 * here (a replica never sees a commit that could still be lost), read through the cluster
 * state's index from the Paxos log.
 */
import { Effect, Layer } from "effect"
import { formatGtid, type Gtid } from "../../domain/cluster/gtid.js"
import { type BinlogCursor, BinlogSource, SourceReadError, type SourceTxn, UnknownPosition } from "./BinlogSource.js"
import { concatBytes } from "../../domain/mysql/packet.js"
import { ClusterState, type LoggedTxn } from "../cluster/ClusterState.js"

/** Transactions read from the log at a time, and about how many bytes. */
const PAGE = 256
const PAGE_BYTES = 4 * 1024 * 1024

/** A transaction's concatenated events, split by each header's event length (offset 9), and where the whole ones end. */
const splitAt = (bytes: Uint8Array): { readonly events: ReadonlyArray<Uint8Array>; readonly end: number } => {
  const out: Array<Uint8Array> = []
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  let at = 0
  while (at + 19 <= bytes.length) {
    const length = view.getUint32(at + 9, true)
    if (length < 19 || at + length > bytes.length) break
    out.push(bytes.subarray(at, at + length))
    at += length
  }
  return { events: out, end: at }
}

/** A transaction's concatenated events, split by each header's event length (offset 9). */
export const splitEvents = (bytes: Uint8Array): ReadonlyArray<Uint8Array> => splitAt(bytes).events

/**
 * Events arriving in chunks (a large transaction's parts, cut anywhere): each push gives
 * the whole events so far; the bytes of one a chunk's end cut are carried into the next.
 */
export class EventSplitter {
  private carry: Uint8Array = new Uint8Array(0)

  push(chunk: Uint8Array): ReadonlyArray<Uint8Array> {
    const bytes = this.carry.length > 0 ? concatBytes([this.carry, chunk]) : chunk
    const { end, events } = splitAt(bytes)
    this.carry = bytes.subarray(end)
    return events
  }

  /** Bytes of an event not yet complete. */
  get leftover(): Uint8Array {
    return this.carry
  }
}

/**
 * A transaction for the binlog server. A large one's parts are read from the log one at a
 * time as the server asks for them (after the replica's socket took the previous ones), so
 * a replica's agent holds a part or two of it, not all of it.
 */
const toSource = (t: LoggedTxn): SourceTxn => {
  if (t.parts === undefined) return { gtid: t.gtid, events: t.chunks.flatMap(splitEvents) }
  const parts = t.parts
  let next = 0
  const splitter = new EventSplitter()
  const more = Effect.gen(function*() {
    if (next > parts.count) return undefined
    const chunk = next < parts.count
      ? yield* parts.read(next).pipe(Effect.mapError((cause) => new SourceReadError({ cause })))
      : t.chunks.length === 1 ? t.chunks[0]! : concatBytes(t.chunks)
    next++
    const events = splitter.push(chunk)
    if (next > parts.count && splitter.leftover.length > 0) {
      return yield* new SourceReadError({ cause: `transaction ${t.gtid.seq} ends inside an event (${splitter.leftover.length} bytes left)` })
    }
    return events
  })
  return { gtid: t.gtid, events: [], more }
}

/**
 * Why a replica at `position` cannot continue from the log, if it cannot: its position is
 * past the log's end, or the log holds another transaction under that sequence number.
 */
export const checkPosition = Effect.fnUntraced(function*(position: Gtid | null) {
  const cluster = yield* ClusterState
  const start = yield* cluster.logStart
  // The log no longer holds what follows the replica: only a copy can bring it back.
  if (position === null) {
    if (start.seq > 1) return yield* new UnknownPosition({ requested: "(empty)", reason: "purged" })
    return
  }
  const requested = formatGtid(position)
  if (position.seq === start.seq - 1 && start.after !== null) {
    if (start.after.server !== position.server || start.after.domain !== position.domain) {
      return yield* new UnknownPosition({ requested, reason: "diverged" })
    }
    return
  }
  if (position.seq < start.seq - 1) return yield* new UnknownPosition({ requested, reason: "purged" })
  const last = (yield* cluster.current).state.lastGtid
  if (last !== null && position.domain !== last.domain) {
    return yield* new UnknownPosition({ requested, reason: "other-domain" })
  }
  if (last === null || position.seq > last.seq) return yield* new UnknownPosition({ requested, reason: "ahead" })
  const [at] = yield* cluster.transactionsFrom(position.seq, 1).pipe(
    Effect.catchTag("LogCompacted", () => Effect.fail(new UnknownPosition({ requested, reason: "purged" }))),
    Effect.mapError((cause) => cause._tag === "UnknownPosition" ? cause : new SourceReadError({ cause }))
  )
  if (at === undefined || at.gtid.seq !== position.seq) return yield* new UnknownPosition({ requested, reason: "purged" })
  if (at.gtid.server !== position.server) return yield* new UnknownPosition({ requested, reason: "diverged" })
})

export const make = (formatDescription: Effect.Effect<Uint8Array>) =>
  Effect.gen(function*() {
    const cluster = yield* ClusterState
    const services = yield* Effect.context<ClusterState>()

    /**
     * Pulled page by page from the log (memory for recent entries, storage for older ones):
     * a replica that falls behind reads the log at its own pace, and nothing queues up for
     * it in memory.
     */
    const after = (position: Gtid | null) =>
      Effect.gen(function*() {
        yield* checkPosition(position)
        let nextSeq = position === null ? 1 : position.seq + 1
        const page = Effect.suspend(() => cluster.transactionsFrom(nextSeq, PAGE, PAGE_BYTES)).pipe(
          Effect.map((txns) => {
            if (txns.length > 0) nextSeq = txns[txns.length - 1]!.gtid.seq + 1
            return txns.map(toSource)
          }),
          Effect.mapError((cause) => new SourceReadError({ cause }))
        )
        const next = (maxWaitMs: number): Effect.Effect<ReadonlyArray<SourceTxn>, SourceReadError> =>
          Effect.gen(function*() {
            const ready = yield* page
            if (ready.length > 0) return ready
            if (!(yield* cluster.awaitSeqWithin(nextSeq, maxWaitMs))) return []
            const again = yield* page
            // Accepted but not readable (never expected): do not spin.
            if (again.length === 0) {
              yield* Effect.logWarning(`chosen binlog: transaction ${nextSeq} is accepted but cannot be read yet`)
              yield* Effect.sleep("100 millis")
            }
            return again
          })
        return { next } satisfies BinlogCursor
      }).pipe(Effect.provideContext(services))

    return BinlogSource.of({ after, formatDescription })
  })

export const layer = (formatDescription: Effect.Effect<Uint8Array>): Layer.Layer<BinlogSource, never, ClusterState> =>
  Layer.effect(BinlogSource, make(formatDescription))
