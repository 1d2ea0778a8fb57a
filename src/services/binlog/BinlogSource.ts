/**
 * Where a BinlogServer gets the transactions it streams: later the chosen log, in tests a
 * store of transactions captured from another server. Transactions come in GTID order,
 * each as its original event bytes (checksums included).
 */
import { Context, Data, Deferred, Duration, Effect } from "effect"
import { formatGtid, type Gtid } from "../../domain/cluster/gtid.js"

export interface SourceTxn {
  readonly gtid: Gtid
  /** The transaction's events, each with its 19-byte header and CRC32 trailer. */
  readonly events: ReadonlyArray<Uint8Array>
  /**
   * A large transaction's further events, read when asked for: each call gives the next
   * ones after `events`, undefined once there are no more. Asked for once the previous
   * ones are sent, so what is held stays bounded.
   */
  readonly more?: Effect.Effect<ReadonlyArray<Uint8Array> | undefined, SourceReadError> | undefined
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

/** The source could not read its transactions (storage failed): the replica's stream ends and it reconnects. */
export class SourceReadError extends Data.TaggedError("SourceReadError")<{ readonly cause: unknown }> {}

/**
 * A reader of the transactions after a position, pulled by the binlog server at its own
 * pace: no queue or fiber between the log and the replica's socket.
 */
export interface BinlogCursor {
  /**
   * The next transactions in GTID order (whatever is ready, at least one), or none when
   * nothing came within `maxWaitMs` (the server then sends a heartbeat).
   */
  readonly next: (maxWaitMs: number) => Effect.Effect<ReadonlyArray<SourceTxn>, SourceReadError>
}

export interface BinlogSourceShape {
  /**
   * Every transaction after `position` (the replica's last applied GTID; null: from the
   * start), first those already there, then new ones as they arrive.
   */
  readonly after: (position: Gtid | null) => Effect.Effect<BinlogCursor, UnknownPosition | SourceReadError>
  /** The Format_description event of the server the transactions came from. */
  readonly formatDescription: Effect.Effect<Uint8Array>
}

export class BinlogSource extends Context.Service<BinlogSource, BinlogSourceShape>()("phxmaria/BinlogSource") {}

/** Transactions an in-memory cursor hands over at a time (as the chosen log's pages). */
const IN_MEMORY_PAGE = 256

/** A source held in memory (tests, tools): `append` adds transactions in GTID order. */
export const makeInMemory = Effect.fnUntraced(function*(formatDescription: Uint8Array) {
  let txns: ReadonlyArray<SourceTxn> = []
  /** Completed (and replaced) on every append: what a waiting cursor waits for. */
  let appended = Deferred.makeUnsafe<void>()

  const append = (txn: SourceTxn) =>
    Effect.sync(() => {
      txns = [...txns, txn]
      const done = appended
      appended = Deferred.makeUnsafe<void>()
      Deferred.doneUnsafe(done, Effect.void)
    })

  const after = (position: Gtid | null) =>
    Effect.gen(function*() {
      if (position !== null) {
        const first = txns[0]
        const last = txns[txns.length - 1]
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
      let nextSeq = position === null ? 0 : position.seq + 1
      const ready = () => {
        const out = txns.filter((t) => t.gtid.seq >= nextSeq).slice(0, IN_MEMORY_PAGE)
        if (out.length > 0) nextSeq = out[out.length - 1]!.gtid.seq + 1
        return out
      }
      const next = (maxWaitMs: number): Effect.Effect<ReadonlyArray<SourceTxn>> =>
        Effect.suspend(() => {
          const now = ready()
          if (now.length > 0) return Effect.succeed(now)
          return Deferred.await(appended).pipe(
            Effect.timeoutOption(Duration.millis(maxWaitMs)),
            Effect.map(() => ready())
          )
        })
      return { next } satisfies BinlogCursor
    })

  const source = BinlogSource.of({ after, formatDescription: Effect.succeed(formatDescription) })
  return { source, append }
})
