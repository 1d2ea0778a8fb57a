/**
 * Where a BinlogServer gets the transactions it streams: later the chosen log, in tests a
 * store of transactions captured from another server. Transactions come in GTID order,
 * each as its original event bytes (checksums included).
 */
import { Context, Data, Effect, PubSub, Ref, Stream } from "effect"
import { formatGtid, type Gtid } from "../domain/gtid.js"

export interface SourceTxn {
  readonly gtid: Gtid
  /** The transaction's events, each with its 19-byte header and CRC32 trailer. */
  readonly events: ReadonlyArray<Uint8Array>
}

/** The replica asked for a position the source cannot serve; it gets ERR 1236 with this text. */
export class UnknownPosition extends Data.TaggedError("UnknownPosition")<{
  readonly requested: string
  readonly reason: "ahead" | "purged" | "other-domain" | "diverged"
}> {
  override get message(): string {
    return this.reason === "ahead"
      ? `the replica's GTID position ${this.requested} is ahead of the cluster's log: it has transactions the cluster does not (diverged replica)`
      : this.reason === "diverged"
      ? `the replica's last transaction ${this.requested} is not the cluster's transaction with that sequence number (diverged replica)`
      : this.reason === "purged"
      ? `the transactions after ${this.requested} are no longer retained: rebuild the replica from a snapshot`
      : `GTID position ${this.requested} is in a domain this cluster does not serve`
  }
}

export interface BinlogSourceShape {
  /**
   * Every transaction after `position` (the replica's last applied GTID; null: from the
   * start), first those already there, then new ones as they arrive.
   */
  readonly after: (position: Gtid | null) => Effect.Effect<Stream.Stream<SourceTxn>, UnknownPosition>
  /** The Format_description event of the server the transactions came from. */
  readonly formatDescription: Effect.Effect<Uint8Array>
}

export class BinlogSource extends Context.Service<BinlogSource, BinlogSourceShape>()("phxmaria/BinlogSource") {}

/** A source held in memory (tests, tools): `append` adds transactions in GTID order. */
export const makeInMemory = Effect.fnUntraced(function*(formatDescription: Uint8Array) {
  const txns = yield* Ref.make<ReadonlyArray<SourceTxn>>([])
  const hub = yield* PubSub.unbounded<SourceTxn>()

  const append = (txn: SourceTxn) =>
    Effect.flatMap(Ref.update(txns, (all) => [...all, txn]), () => PubSub.publish(hub, txn))

  const after = (position: Gtid | null) =>
    Effect.gen(function*() {
      const all = yield* Ref.get(txns)
      if (position !== null) {
        const first = all[0]
        const last = all[all.length - 1]
        if (last !== undefined && position.domain !== last.gtid.domain) {
          return yield* new UnknownPosition({ requested: formatGtid(position), reason: "other-domain" })
        }
        if (last === undefined || position.seq > last.gtid.seq) {
          return yield* new UnknownPosition({ requested: formatGtid(position), reason: "ahead" })
        }
        if (position.seq < first!.gtid.seq - 1) {
          return yield* new UnknownPosition({ requested: formatGtid(position), reason: "purged" })
        }
      }
      const fromSeq = position === null ? 0 : position.seq + 1
      return Stream.unwrap(Effect.gen(function*() {
        // Subscribe before reading history, so nothing appended in between is missed.
        const sub = yield* PubSub.subscribe(hub)
        const history = (yield* Ref.get(txns)).filter((t) => t.gtid.seq >= fromSeq)
        const next = Math.max(fromSeq, (history[history.length - 1]?.gtid.seq ?? -1) + 1)
        return Stream.concat(
          Stream.fromIterable(history),
          Stream.fromSubscription(sub).pipe(Stream.filter((t) => t.gtid.seq >= next))
        )
      }))
    })

  const source = BinlogSource.of({ after, formatDescription: Effect.succeed(formatDescription) })
  return { source, append }
})
