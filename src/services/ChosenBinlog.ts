/**
 * The chosen log's binlog transactions as a {@link BinlogSource}: what this node's binlog
 * server streams to its own MariaDB replica. Only chosen AND accepted transactions are
 * here (a replica never sees a commit that could still be lost), read from the cluster
 * state's store, then live as they are applied.
 */
import { Effect, Layer, Stream } from "effect"
import type { BinlogTxn } from "../domain/cluster.js"
import { formatGtid, type Gtid } from "../domain/gtid.js"
import { BinlogSource, type SourceTxn, UnknownPosition } from "./BinlogSource.js"
import { ClusterState } from "./ClusterState.js"

const PAGE = 256

/** A transaction's concatenated events, split by each header's event length (offset 9). */
export const splitEvents = (bytes: Uint8Array): ReadonlyArray<Uint8Array> => {
  const out: Array<Uint8Array> = []
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  let at = 0
  while (at + 19 <= bytes.length) {
    const length = view.getUint32(at + 9, true)
    if (length < 19 || at + length > bytes.length) break
    out.push(bytes.subarray(at, at + length))
    at += length
  }
  return out
}

const toSource = (t: BinlogTxn): SourceTxn => ({ gtid: t.gtid, events: splitEvents(t.events) })

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
  const [at] = yield* cluster.transactionsFrom(position.seq, 1)
  if (at === undefined || at.gtid.seq !== position.seq) return yield* new UnknownPosition({ requested, reason: "purged" })
  if (at.gtid.server !== position.server) return yield* new UnknownPosition({ requested, reason: "diverged" })
})

export const make = (formatDescription: Effect.Effect<Uint8Array>) =>
  Effect.gen(function*() {
    const cluster = yield* ClusterState
    const services = yield* Effect.context<ClusterState>()

    const after = (position: Gtid | null) =>
      Effect.gen(function*() {
        yield* checkPosition(position)
        let next = position === null ? 1 : position.seq + 1
        const history: Stream.Stream<BinlogTxn> = Stream.unwrap(
          // Suspended: each page reads from where the previous one ended.
          Effect.map(Effect.suspend(() => cluster.transactionsFrom(next, PAGE)), (page) => {
            if (page.length === 0) return Stream.empty
            next = page[page.length - 1]!.gtid.seq + 1
            return Stream.concat(Stream.fromIterable(page), history)
          })
        )
        return Stream.unwrap(Effect.gen(function*() {
          // Subscribed before the history is read, so nothing applied in between is missed.
          const live = yield* cluster.applied
          const liveTxns = live.pipe(
            Stream.flatMap((a) =>
              a.entry?._tag === "Binlog" && a.outcome._tag === "Accepted" ? Stream.fromIterable(a.entry.txns) : Stream.empty
            ),
            Stream.filter((t) => t.gtid.seq >= next)
          )
          return Stream.concat(history, liveTxns).pipe(Stream.map(toSource))
        }))
      }).pipe(Effect.provideContext(services))

    return BinlogSource.of({ after, formatDescription })
  })

export const layer = (formatDescription: Effect.Effect<Uint8Array>): Layer.Layer<BinlogSource, never, ClusterState> =>
  Layer.effect(BinlogSource, make(formatDescription))
