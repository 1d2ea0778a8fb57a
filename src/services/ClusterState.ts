/**
 * The replicated cluster state on this node: applies chosen entries in log order, keeps
 * the result (with the next instance to apply) in LMDB so a restart resumes without
 * re-applying, and tells a proposer whether its entry was accepted, and why not.
 */
import { Context, Data, Deferred, Effect, Layer, PubSub, Stream, SubscriptionRef } from "effect"
import { open } from "lmdb"
import { mkdirSync } from "node:fs"
import {
  applyEntry,
  type BinlogTxn,
  type ClusterEntry,
  type ClusterStateData,
  decodeEntry,
  encodeEntry,
  initialClusterState,
  type Outcome
} from "../domain/cluster.js"
import type { ProposeError } from "../domain/errors.js"
import { PaxosLog } from "./PaxosLog.js"

export class ClusterStateError extends Data.TaggedError("ClusterStateError")<{
  readonly operation: string
  readonly cause: unknown
}> {}

export interface ClusterSnapshot {
  readonly state: ClusterStateData
  /** The next instance to apply: everything below it is in `state`. */
  readonly appliedUpTo: number
}

/** One applied entry and what the state machine said. */
export interface AppliedEntry {
  readonly instance: number
  readonly index: number
  /** Undefined for a value that was not a valid entry (rejected as Malformed). */
  readonly entry: ClusterEntry | undefined
  readonly outcome: Outcome
  readonly state: ClusterStateData
}

export interface ClusterStateShape {
  readonly current: Effect.Effect<ClusterSnapshot>
  readonly changes: Stream.Stream<ClusterSnapshot>
  /** Entries as they are applied from now on (subscribe before proposing to see yours). */
  readonly applied: Effect.Effect<Stream.Stream<AppliedEntry>, never, import("effect").Scope.Scope>
  /**
   * Chosen and accepted binlog transactions (domain of the log) with seq >= fromSeq, in
   * order, at most `limit`: every one applied so far is included (it waits for their write).
   */
  readonly transactionsFrom: (fromSeq: number, limit: number) => Effect.Effect<ReadonlyArray<BinlogTxn>>
  /** Proposes an entry and waits until this node has applied it: its outcome. */
  readonly propose: (entry: ClusterEntry) => Effect.Effect<Outcome, ProposeError>
}

export class ClusterState extends Context.Service<ClusterState, ClusterStateShape>()("phxmaria/ClusterState") {}

const SNAPSHOT_EVERY_MS = 200

/** Outcomes of recently applied positions, for proposers whose answer came after the apply. */
const RECENT_OUTCOMES = 10_000

export const make = Effect.fnUntraced(function*(options: { readonly dir: string; readonly members: ReadonlyArray<number> }) {
  const log = yield* PaxosLog
  const env = yield* Effect.acquireRelease(
    Effect.try({
      try: () => {
        mkdirSync(options.dir, { recursive: true })
        // No fsync: everything here is derived from the Paxos log and replayed from it after a
        // crash (writes stay ordered, so a lost tail loses snapshot and transactions together).
        return open({ path: options.dir, encoding: "msgpack", compression: false, noSync: true })
      },
      catch: (cause) => new ClusterStateError({ operation: "open", cause })
    }),
    (e) => Effect.promise(() => e.close())
  )
  // Accepted transactions by GTID seq: what this node's binlog server serves its replica.
  const txns = env.openDB<BinlogTxn, number>({ name: "txns", encoding: "msgpack" })
  /** Accepted transactions whose put is not committed yet (LMDB reads see only committed data). */
  const pending = new Map<number, BinlogTxn>()
  const stored = env.get("snapshot") as ClusterSnapshot | undefined
  const ref = yield* SubscriptionRef.make<ClusterSnapshot>(
    stored ?? { state: initialClusterState(options.members), appliedUpTo: 0 }
  )
  const hub = yield* PubSub.unbounded<AppliedEntry>()
  let lastWrite = -Infinity
  yield* Effect.addFinalizer(() =>
    Effect.flatMap(SubscriptionRef.get(ref), (snapshot) => Effect.promise(() => env.put("snapshot", snapshot)))
  )
  const waiters = new Map<string, Deferred.Deferred<Outcome>>()
  const recent = new Map<string, Outcome>()

  const settle = (key: string, outcome: Outcome) => {
    recent.set(key, outcome)
    if (recent.size > RECENT_OUTCOMES) recent.delete(recent.keys().next().value!)
    const w = waiters.get(key)
    if (w !== undefined) {
      waiters.delete(key)
      Deferred.doneUnsafe(w, Effect.succeed(outcome))
    }
  }

  const applier = Effect.gen(function*() {
    const start = (yield* SubscriptionRef.get(ref)).appliedUpTo
    yield* log.chosen(start).pipe(
      Stream.runForEach((chosen) =>
        Effect.gen(function*() {
          let { state } = yield* SubscriptionRef.get(ref)
          const applied: Array<AppliedEntry> = []
          chosen.value.values.forEach((bytes, index) => {
            const decoded = decodeEntry(bytes)
            const entry = decoded._tag === "Malformed" ? undefined : (decoded as ClusterEntry)
            const [next, outcome]: readonly [ClusterStateData, Outcome] = entry === undefined
              ? [state, { _tag: "Rejected", reason: decoded as Extract<typeof decoded, { _tag: "Malformed" }> }]
              : applyEntry(state, entry)
            // Written before the snapshot that includes it (one LMDB writer, in order), and
            // idempotent when a restart applies it again.
            if (entry?._tag === "Binlog" && outcome._tag === "Accepted") {
              for (const t of entry.txns) {
                // Readable from `pending` until LMDB has committed the put.
                pending.set(t.gtid.seq, t)
                void txns.put(t.gtid.seq, t).then(
                  () => pending.delete(t.gtid.seq),
                  // A gap here would look like divergence after a restart: stop loudly instead.
                  (e) => {
                    console.error(`phxmaria: cannot store transaction ${t.gtid.seq}: ${String(e)}`)
                    process.exit(70)
                  }
                )
              }
            }
            state = next
            applied.push({ instance: chosen.instance, index, entry, outcome, state })
          })
          const snapshot: ClusterSnapshot = { state, appliedUpTo: chosen.instance + 1 }
          yield* SubscriptionRef.set(ref, snapshot)
          // Written at most every SNAPSHOT_EVERY_MS (and at close), never awaited: after a
          // crash the log replays what the last write missed, and apply is deterministic.
          const now = performance.now()
          if (now - lastWrite >= SNAPSHOT_EVERY_MS) {
            lastWrite = now
            env.put("snapshot", snapshot)
          }
          for (const a of applied) settle(`${a.instance}/${a.index}`, a.outcome)
          yield* PubSub.publishAll(hub, applied)
        })
      )
    )
  })
  // The node cannot serve without applying the log: a dead applier is logged, never silent.
  yield* Effect.forkScoped(applier.pipe(Effect.tapCause((cause) => Effect.logError("the cluster state stopped applying the log", cause))))

  const propose = (entry: ClusterEntry): Effect.Effect<Outcome, ProposeError> =>
    Effect.gen(function*() {
      const position = yield* log.propose(encodeEntry(entry))
      const key = `${position.instance}/${position.index}`
      const known = recent.get(key)
      if (known !== undefined) return known
      const d = yield* Deferred.make<Outcome>()
      waiters.set(key, d)
      // Applied between the lookup and the registration: settle() ran already.
      const raced = recent.get(key)
      if (raced !== undefined) {
        waiters.delete(key)
        return raced
      }
      return yield* Deferred.await(d).pipe(Effect.onInterrupt(() => Effect.sync(() => waiters.delete(key))))
    })

  const transactionsFrom = (fromSeq: number, limit: number) =>
    Effect.sync(() => {
      const out: Array<BinlogTxn> = []
      let next = fromSeq
      // Contiguous from fromSeq: committed ones from LMDB, the rest from `pending`.
      for (const { key, value } of txns.getRange({ start: fromSeq, limit })) {
        if (key !== next) break
        out.push(value)
        next++
      }
      while (out.length < limit) {
        const t = pending.get(next)
        if (t === undefined) break
        out.push(t)
        next++
      }
      return out
    })

  return ClusterState.of({
    current: SubscriptionRef.get(ref),
    transactionsFrom,
    changes: SubscriptionRef.changes(ref),
    applied: Effect.map(PubSub.subscribe(hub), Stream.fromSubscription),
    propose
  })
})

export const layer = (options: { readonly dir: string; readonly members: ReadonlyArray<number> }) =>
  Layer.effect(ClusterState, make(options))
