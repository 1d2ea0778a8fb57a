/**
 * Runs for master, renews the lease and steps down, driving the pure lease logic
 * (src/domain/lease.ts) with the monotonic clock and the applied cluster state. Renewal
 * depends only on the Paxos log, never on a query to MariaDB (docs/architecture.md, "Lease and fencing").
 */
import { Context, Data, Effect, Layer, PubSub, Queue, Ref, Stream } from "effect"
import {
  decide,
  holdsLease,
  initialLeaseView,
  type LeaseConfig,
  pauseMs,
  onStalled,
  type LeaseView,
  onApplied,
  onHandOver,
  onOutcome,
  onProposed,
  onResigning,
  onState,
  remainingMs
} from "../../domain/cluster/lease.js"
import { ClusterState } from "./ClusterState.js"
import { PaxosLog } from "../paxos/PaxosLog.js"
import { forkScopedLogged } from "../fibers.js"
import * as Time from "../time.js"

/**
 * "My database has applied every chosen transaction", and how far behind it is if not. For
 * the lease holder, "ready" means its database still serves: a holder that is not ready
 * resigns so that another node can take over without waiting the lease out.
 */
export interface ReadinessShape {
  readonly check: Effect.Effect<{ readonly ready: boolean; readonly lag: number }>
  /** Completes at the next change (one waiter). */
  readonly changes: Effect.Effect<void>
}
export class Readiness extends Context.Service<Readiness, ReadinessShape>()("phxmaria/Readiness") {
  /** Until the MariaDB part provides the real check: always ready. */
  static readonly alwaysReady = Layer.succeed(
    Readiness,
    Readiness.of({ check: Effect.succeed({ ready: true, lag: 0 }), changes: Effect.never })
  )
}

export interface ReadinessValue {
  readonly ready: boolean
  readonly lag: number
}

/** Where the database side writes its readiness; the lease reads it without querying MariaDB. */
export class ReadinessCell extends Context.Service<ReadinessCell, { readonly set: (r: ReadinessValue) => Effect.Effect<void> }>()(
  "phxmaria/ReadinessCell"
) {}

/** Readiness and the cell that sets it (not ready until told); a change wakes the lease at once. */
export const readinessCellLayer: Layer.Layer<Readiness | ReadinessCell> = Layer.unwrap(
  Effect.gen(function*() {
    const ref = yield* Ref.make<ReadinessValue>({ ready: false, lag: 1_000_000 })
    const changed = yield* Queue.sliding<void>(1)
    const set = (r: ReadinessValue) =>
      Effect.flatMap(Ref.getAndSet(ref, r), (old) =>
        old.ready === r.ready && old.lag === r.lag ? Effect.void : Queue.offer(changed, undefined).pipe(Effect.asVoid))
    return Layer.mergeAll(
      Layer.succeed(Readiness, Readiness.of({ check: Ref.get(ref), changes: Queue.take(changed) })),
      Layer.succeed(ReadinessCell, ReadinessCell.of({ set }))
    )
  })
)

export type LeaseEvent =
  | { readonly _tag: "TookOver"; readonly epoch: number }
  | { readonly _tag: "SteppedDown"; readonly epoch: number }

export interface LeaseStatus {
  readonly isMaster: boolean
  readonly master: number | null
  readonly epoch: number
  readonly leaseRemainingMs: number
}

export interface MasterLeaseShape {
  /** Whether this node holds the lease right now, in its own count. */
  readonly isMaster: Effect.Effect<boolean>
  /** The same, synchronously: for a check on every chunk of the RW relay (Proxy's rwGate). */
  readonly holdsNow: () => boolean
  readonly status: Effect.Effect<LeaseStatus>
  /**
   * A switchover: gives the lease to `successor` now (the caller fenced this node and its
   * last transactions are in the log). This node stops holding at once (SteppedDown); the
   * Resign naming the successor is proposed, and re-proposed until it is chosen or the
   * lease runs out. Fails when this node does not hold the lease.
   */
  readonly handOver: (successor: number) => Effect.Effect<void, NotLeaseHolder>
  /** TookOver / SteppedDown as they happen (subscribe within a scope). */
  readonly events: Effect.Effect<Stream.Stream<LeaseEvent>, never, import("effect").Scope.Scope>
}

export class NotLeaseHolder extends Data.TaggedError("NotLeaseHolder")<{ readonly master: number | null }> {
  override get message() {
    return `this node does not hold the master lease (master: ${this.master ?? "none"})`
  }
}

export class MasterLease extends Context.Service<MasterLease, MasterLeaseShape>()("phxmaria/MasterLease") {}

export const make = Effect.fnUntraced(function*(config: LeaseConfig) {
  const cluster = yield* ClusterState
  const log = yield* PaxosLog
  const readiness = yield* Readiness
  const snapshot = yield* cluster.current
  const monotonicMs = yield* Time.monotonicMs
  let view: LeaseView = initialLeaseView(snapshot.state, monotonicMs())
  let epoch = snapshot.state.epoch
  let holding = false
  const events = yield* PubSub.unbounded<LeaseEvent>()
  const layerScope = yield* Effect.scope

  /** Publishes a transition of our own count; called after every change and on each check. */
  const observe = Effect.suspend(() => {
    const now = holdsLease(config, view, monotonicMs())
    if (now === holding) return Effect.void
    holding = now
    const event: LeaseEvent = now ? { _tag: "TookOver", epoch } : { _tag: "SteppedDown", epoch }
    // Why, for whoever reads the log after a master change.
    const why = now
      ? `holds the master lease (epoch ${epoch}, record version ${view.masterVersion})`
      : view.master !== config.nodeId
      ? `no longer holds the master lease: the record names ${view.master === null ? "no master" : `node ${view.master}`} (epoch ${epoch})`
      : view.heldFrom === undefined
      ? `gave the master lease up (resigned${view.handingTo !== undefined ? `, to node ${view.handingTo}` : ""})`
      : `no longer holds the master lease: no renewal was chosen within its ${config.leaseMs} ms`
    return Effect.andThen(Effect.logInfo(`lease: this node ${why}`), PubSub.publish(events, event))
  })

  /** Wakes the step loop before its timer (an applied entry, a readiness change). */
  const wake = yield* Queue.sliding<void>(1)

  // Applied entries move the view: a new master record, and our own proposal's outcome.
  const applied = yield* cluster.applied
  yield* applied.pipe(
    Stream.runForEach((a) =>
      Effect.suspend(() => {
        const now = monotonicMs()
        const before = view
        view = onState(config, view, a.state, now)
        epoch = a.state.epoch
        if (a.entry !== undefined) view = onApplied(config, view, a.entry, a.outcome, now)
        return view === before ? observe : Effect.andThen(observe, Queue.offer(wake, undefined))
      })
    ),
    forkScopedLogged("lease: following applied entries")
  )
  yield* Effect.forever(Effect.andThen(readiness.changes, Queue.offer(wake, undefined))).pipe(forkScopedLogged("lease: readiness changes"))

  /** When the loop meant to run next: running much later means this process was stopped. */
  let expectedAt = monotonicMs()
  const step = Effect.gen(function*() {
    const now = monotonicMs()
    if (now - expectedAt > config.leaseMs / 2) {
      yield* Effect.logInfo(`lease: this node did not run for ${Math.round(now - expectedAt)} ms; waiting out the current lease before running`)
      view = onStalled(config, view, now)
    }
    if (holdsLease(config, view, now)) {
      const s = yield* log.status
      if (s.role !== "leader") yield* log.lead
    }
    const { ready, lag } = yield* readiness.check
    // A node that does not vote in the log's membership (a learner, or removed) never runs.
    const membership = (yield* cluster.current).state.membership
    const votes = membership === undefined || membership.some((m) => m.nodeId === config.nodeId && m.voter)
    const decided = decide(config, view, now, ready, lag)
    const action = decided._tag === "Propose" && !votes ? { _tag: "None" as const } : decided
    if (action._tag === "Propose") {
      const proposalId = yield* Time.randomId
      if (!holdsLease(config, view, now)) {
        yield* Effect.logInfo(`lease: proposing to take the master lease (record: ${view.master === null ? "no master" : `node ${view.master}`}, version ${action.basedOnVersion})`)
      }
      // The lease counts from now: the moment before the proposal leaves.
      view = onProposed(view, action.basedOnVersion, proposalId, now)
      yield* cluster.propose({
        _tag: "MasterLease",
        node: config.nodeId,
        basedOnVersion: action.basedOnVersion,
        leaseMs: config.leaseMs,
        proposalId
      }).pipe(
        // The outcome itself arrives through `applied`; here only a failure matters (it
        // may be retried at once: wake the loop, as for an applied outcome).
        Effect.catch(() => Effect.suspend(() => {
          if (view.proposing?.proposalId !== proposalId) return Effect.void
          view = onOutcome(config, view, "failed", monotonicMs())
          return Queue.offer(wake, undefined)
        })),
        Effect.forkScoped
      )
    }
    if (action._tag === "Resign") {
      // Marked as in flight so it is sent once per proposeTimeout, not on every step.
      view = onResigning(config, view, action.basedOnVersion, now)
      yield* proposeResign(action.basedOnVersion, action.successor)
    }
    yield* observe
    return now
  })
  const proposeResign = (basedOnVersion: number, successor: number | undefined) =>
    cluster.propose({ _tag: "Resign", node: config.nodeId, basedOnVersion, ...(successor !== undefined ? { successor } : {}) }).pipe(
      Effect.tap((outcome) => Effect.logInfo(`resigned the master lease${successor !== undefined ? ` to node ${successor}` : ""}: ${outcome._tag}`)),
      Effect.catch(() => Effect.void),
      Effect.forkIn(layerScope),
      Effect.asVoid
    )
  // Woken at the next deadline of the lease logic (renewal, step-down, lapse, a proposal
  // given up), for an applied entry or a readiness change, and at least once a second.
  // Which deadline is next is judged at the reading the step decided with (see pauseMs).
  const pause = (decidedAt: number) =>
    Effect.suspend(() => {
      const now = monotonicMs()
      const ms = pauseMs(config, view, decidedAt, now)
      expectedAt = now + ms
      return Effect.timeoutOption(Queue.take(wake), ms)
    })
  yield* Effect.forever(Effect.flatMap(step, pause)).pipe(forkScopedLogged("lease: the step loop"))

  return MasterLease.of({
    isMaster: Effect.sync(() => holdsLease(config, view, monotonicMs())),
    holdsNow: () => holdsLease(config, view, monotonicMs()),
    handOver: (successor) =>
      Effect.gen(function*() {
        const now = monotonicMs()
        if (!holdsLease(config, view, now)) return yield* new NotLeaseHolder({ master: view.master })
        view = onHandOver(config, view, successor, now)
        yield* Effect.logInfo(`handing the master lease over to node ${successor}`)
        yield* observe
        yield* proposeResign(view.masterVersion, successor)
        yield* Queue.offer(wake, undefined)
      }),
    status: Effect.sync(() => {
      const now = monotonicMs()
      return { isMaster: holdsLease(config, view, now), master: view.master, epoch, leaseRemainingMs: Math.round(remainingMs(config, view, now)) }
    }),
    events: Effect.map(PubSub.subscribe(events), Stream.fromSubscription)
  })
})

export const layer = (config: LeaseConfig) => Layer.effect(MasterLease, make(config))
