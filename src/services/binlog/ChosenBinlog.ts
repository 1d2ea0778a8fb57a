/**
 * The chosen log's binlog transactions as a {@link BinlogSource}: what this node's binlog
 * server streams to its own MariaDB replica. Only chosen AND accepted transactions are
 * here (a replica never sees a commit that could still be lost), read through the cluster
 * state's index from the Paxos log.
 */
import { Duration, Effect, Layer, Option } from "effect"
import { formatGtid, type Gtid } from "../../domain/cluster/gtid.js"
import { type BinlogCursor, BinlogSource, SourceReadError, type SourceTxn, UnknownPosition } from "./BinlogSource.js"
import { concatBytes } from "../../domain/mysql/packet.js"
import { ClusterState, type LoggedTxn } from "../cluster/ClusterState.js"

/** Transactions read from the log at a time, and about how many bytes. */
const PAGE = 256
const PAGE_BYTES = 4 * 1024 * 1024

/**
 * A transaction's events, end to end in `chunks`, split by each header's event length
 * (offset 9): views into the chunks, and a copy only of an event that spans two of them.
 */
export const splitEvents = (chunks: Uint8Array | ReadonlyArray<Uint8Array>): ReadonlyArray<Uint8Array> =>
  splitEventsWithRest(chunks instanceof Uint8Array ? [chunks] : chunks).events

/** The same, and the bytes after the last whole event (the start of one that continues in a later chunk). */
export const splitEventsWithRest = (list: ReadonlyArray<Uint8Array>): { readonly events: ReadonlyArray<Uint8Array>; readonly rest: Uint8Array } => {
  const out: Array<Uint8Array> = []
  let chunk = 0
  let at = 0
  /** `n` bytes from (chunk, at) on, as a view when they lie in one chunk; undefined past the end. */
  const take = (n: number, advance: boolean): Uint8Array | undefined => {
    let c = chunk
    let a = at
    while (c < list.length && a >= list[c]!.length) {
      a -= list[c]!.length
      c++
    }
    if (c >= list.length) return undefined
    let bytes: Uint8Array
    if (a + n <= list[c]!.length) {
      bytes = list[c]!.subarray(a, a + n)
      a += n
    } else {
      bytes = new Uint8Array(n)
      let filled = 0
      while (filled < n) {
        if (c >= list.length) return undefined
        const piece = list[c]!.subarray(a, Math.min(list[c]!.length, a + n - filled))
        bytes.set(piece, filled)
        filled += piece.length
        a += piece.length
        if (a >= list[c]!.length) {
          c++
          a = 0
        }
      }
    }
    if (advance) {
      chunk = c
      at = a
    }
    return bytes
  }
  while (true) {
    const header = take(19, false)
    if (header === undefined) break
    const length = (header[9]! | (header[10]! << 8) | (header[11]! << 16) | (header[12]! << 24)) >>> 0
    if (length < 19) break
    const event = take(length, true)
    if (event === undefined) break
    out.push(event)
  }
  const left = list.slice(chunk).map((c, i) => (i === 0 ? c.subarray(at) : c)).filter((c) => c.length > 0)
  return { events: out, rest: left.length === 0 ? new Uint8Array(0) : left.length === 1 ? left[0]! : concatBytes(left) }
}

/**
 * A transaction for the binlog server. A large one's parts are read from the log one at a
 * time as the server asks for them (after the replica's socket took the previous ones), so
 * a replica's agent holds a part or two of it, not all of it.
 */
const toSource = (t: LoggedTxn): SourceTxn => {
  if (t.parts === undefined) return { gtid: t.gtid, events: splitEvents(t.chunks) }
  const parts = t.parts
  let next = 0
  let carry: Uint8Array = new Uint8Array(0)
  const more = Effect.gen(function*() {
    if (next > parts.count) return undefined
    const chunks = next < parts.count
      ? [yield* parts.read(next).pipe(Effect.mapError((cause) => new SourceReadError({ cause })))]
      : t.chunks
    next++
    const split = splitEventsWithRest(carry.length > 0 ? [carry, ...chunks] : chunks)
    carry = split.rest
    if (next > parts.count && carry.length > 0) {
      return yield* new SourceReadError({ cause: `transaction ${t.gtid.seq} ends inside an event (${carry.length} bytes left)` })
    }
    return split.events
  })
  return { gtid: t.gtid, events: [], more }
}

/**
 * Why a replica at `position` cannot continue from the log, if it cannot: its position is
 * past the log's end, or the log holds another transaction under that sequence number.
 */
export const checkPosition = Effect.fnUntraced(function*(position: Gtid | null) {
  if (position === null) return
  const cluster = yield* ClusterState
  const last = (yield* cluster.current).state.lastGtid
  const requested = formatGtid(position)
  if (last !== null && position.domain !== last.domain) {
    return yield* new UnknownPosition({ requested, reason: "other-domain" })
  }
  if (last === null || position.seq > last.seq) return yield* new UnknownPosition({ requested, reason: "ahead" })
  const [at] = yield* cluster.transactionsFrom(position.seq, 1).pipe(Effect.mapError((cause) => new SourceReadError({ cause })))
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
            const arrived = yield* Effect.timeoutOption(cluster.awaitSeq(nextSeq), Duration.millis(maxWaitMs))
            if (Option.isNone(arrived)) return []
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
