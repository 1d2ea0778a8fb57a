/**
 * The master lease as seen by one node (docs/architecture.md, "Lease and fencing"). Pure: the caller passes the
 * node's monotonic clock reading. The holder counts its lease from when it SENT the
 * proposal and gives it up `marginMs` early; every other node counts from when it LEARNED
 * the lease. With clock rates within ±rho of each other, marginMs > 2 * rho * leaseMs keeps
 * the holder's end before anyone else's start.
 */
import type { ClusterEntry, ClusterStateData, Outcome } from "./cluster.js"

export interface LeaseConfig {
  readonly nodeId: number
  readonly leaseMs: number
  readonly renewEveryMs: number
  readonly marginMs: number
  /** Extra wait before running, per unit of lag a node reports (see `lag`). */
  readonly behindPenaltyMs: number
  /** A proposal with no outcome after this long is given up (a later one is sent). */
  readonly proposeTimeoutMs: number
}

export const defaultLeaseConfig = (nodeId: number, leaseMs = 3_000): LeaseConfig => ({
  nodeId,
  leaseMs,
  renewEveryMs: Math.floor(leaseMs / 3),
  marginMs: Math.max(100, Math.floor(leaseMs / 10)),
  behindPenaltyMs: Math.floor(leaseMs / 6),
  proposeTimeoutMs: Math.floor(leaseMs / 3)
})

export interface LeaseView {
  /** The master record this node last applied. */
  readonly master: number | null
  readonly masterVersion: number
  /** When this node learned that record (or started, for one it found on disk). */
  readonly learnedAt: number
  /** Set while this node holds the lease: when it sent the proposal that granted it. */
  readonly heldFrom: number | undefined
  /** Our MasterLease proposal in flight, if any. */
  readonly proposing: { readonly basedOnVersion: number; readonly sentAt: number; readonly proposalId: number } | undefined
  /** Earliest time of the next renewal proposal. */
  readonly nextRenewAt: number
  /** The lease length in that master record: a holder configured longer than us is waited out in full. */
  readonly recordLeaseMs: number
  /** No master, handed over to this node by a switchover (null: none named). */
  readonly successor: number | null
  /** Set while this node hands its lease over (its Resign names this successor). */
  readonly handingTo?: number | undefined
  /**
   * Set while this node resigns: until when its Resign is re-sent (where its lease would
   * have ended). heldFrom is cleared on resigning, so nothing can count the lease as ours again.
   */
  readonly resignUntil?: number | undefined
}

/** A node starting with `state` from disk counts any lease in it as just learned. */
export const initialLeaseView = (state: ClusterStateData, now: number): LeaseView => ({
  master: state.master,
  masterVersion: state.masterVersion,
  learnedAt: now,
  heldFrom: undefined,
  proposing: undefined,
  nextRenewAt: now,
  recordLeaseMs: state.leaseMs,
  successor: state.successor ?? null
})

/** The proposal id a Resign is marked with while in flight (see `onProposed`). */
export const RESIGN_PROPOSAL_ID = -1

/** Whether this node's lease still runs in its own count (held, not yet over). */
const leaseRuns = (c: LeaseConfig, v: LeaseView, now: number): boolean =>
  v.master === c.nodeId && v.heldFrom !== undefined && now < v.heldFrom + c.leaseMs - c.marginMs

/**
 * Whether this node holds the lease now, in its own count: its lease runs. A node stops
 * holding the moment it proposes Resign (it has fenced itself first; see `onResigning`):
 * once chosen, another node may take over at once, before this one applies it.
 */
export const holdsLease = (c: LeaseConfig, v: LeaseView, now: number): boolean => leaseRuns(c, v, now)

/** Whether this node is resigning: its own record still stands and its lease would still run. */
const resigning = (c: LeaseConfig, v: LeaseView, now: number): boolean =>
  v.master === c.nodeId && v.resignUntil !== undefined && now < v.resignUntil

/**
 * When the current lease lapses in this node's view (no master: already, unless a
 * switchover named another node: it gets a lease length to take over first). The longer of
 * our own lease and the one in the record counts, so nodes with different settings (a
 * rolling config change) never cut a holder's lease short.
 */
export const lapsesAt = (c: LeaseConfig, v: LeaseView): number =>
  v.master === null && (v.successor === null || v.successor === c.nodeId)
    ? -Infinity
    : v.learnedAt + Math.max(c.leaseMs, v.recordLeaseMs)

/** Lease time the holder has left, in its own count (0 when it does not hold it). */
export const remainingMs = (c: LeaseConfig, v: LeaseView, now: number): number =>
  holdsLease(c, v, now) ? v.heldFrom! + c.leaseMs - c.marginMs - now : 0

/**
 * This node was not running for a while (SIGSTOP, a long stall): it saw none of the
 * renewals made meanwhile, so another node's lease counts as just learned and is waited
 * out in full before this node runs. Without this, a node resumed after a pause longer
 * than the lease ran at once and took Paxos leadership from a master that was renewing.
 */
export const onStalled = (c: LeaseConfig, v: LeaseView, now: number): LeaseView =>
  v.master === null || v.master === c.nodeId ? v : { ...v, learnedAt: Math.max(v.learnedAt, now) }

/** The cluster state changed (an entry was applied): track a new master record. */
export const onState = (c: LeaseConfig, v: LeaseView, state: ClusterStateData, now: number): LeaseView => {
  if (state.masterVersion === v.masterVersion) return v
  return {
    ...v,
    master: state.master,
    masterVersion: state.masterVersion,
    learnedAt: now,
    recordLeaseMs: state.leaseMs,
    successor: state.master === null ? state.successor ?? null : null,
    // A renewal chosen while resigning or handing over keeps it going (its Resign is re-sent).
    handingTo: state.master === c.nodeId ? v.handingTo : undefined,
    resignUntil: state.master === c.nodeId ? v.resignUntil : undefined,
    // Another node's lease ends ours at once; our own renewal keeps heldFrom until its outcome.
    heldFrom: state.master === c.nodeId ? v.heldFrom : undefined
  }
}

/**
 * An entry was applied (call after `onState` with the resulting state): if it is our
 * proposal, its outcome decides whether we hold the lease, counted from when we sent it.
 */
export const onApplied = (c: LeaseConfig, v: LeaseView, entry: ClusterEntry, outcome: Outcome, now: number): LeaseView =>
  entry._tag === "MasterLease" && entry.node === c.nodeId && entry.proposalId === v.proposing?.proposalId
    ? onOutcome(c, v, outcome, now)
    : v

/** Our proposal's outcome: from `onApplied`, or "failed" when the log gave up on it (timeout). */
export const onOutcome = (c: LeaseConfig, v: LeaseView, outcome: Outcome | "failed", now: number): LeaseView => {
  const p = v.proposing
  if (p === undefined) return v
  if (outcome !== "failed" && outcome._tag === "Accepted" && v.master === c.nodeId) {
    return { ...v, proposing: undefined, heldFrom: p.sentAt, nextRenewAt: p.sentAt + c.renewEveryMs }
  }
  return { ...v, proposing: undefined, nextRenewAt: now }
}

export type LeaseAction =
  | { readonly _tag: "Propose"; readonly basedOnVersion: number }
  /** Give the lease up now (the holder's database cannot serve): others need not wait it out. */
  | { readonly _tag: "Resign"; readonly basedOnVersion: number; readonly successor?: number }
  | { readonly _tag: "None" }

/**
 * What to do now. `ready`: this node's database has applied every chosen transaction (for
 * the holder: its database still serves; a holder that is not ready resigns).
 * `lag`: how far behind this node says it is (0 = caught up); each unit delays running.
 */
export const decide = (c: LeaseConfig, v: LeaseView, now: number, ready: boolean, lag: number): LeaseAction => {
  // A proposal that is taking too long is abandoned: if it is chosen after all, we do not
  // count it as ours (safe: we only under-count), and its stale version makes ours lose.
  if (v.proposing !== undefined && now - v.proposing.sentAt < c.proposeTimeoutMs) return { _tag: "None" }
  // Resigning (the last Resign got no outcome in time), or not ready while holding: resign.
  if (resigning(c, v, now) || (leaseRuns(c, v, now) && !ready)) {
    return { _tag: "Resign", basedOnVersion: v.masterVersion, ...(v.handingTo !== undefined ? { successor: v.handingTo } : {}) }
  }
  if (leaseRuns(c, v, now)) return now >= v.nextRenewAt ? { _tag: "Propose", basedOnVersion: v.masterVersion } : { _tag: "None" }
  // A master that restarted (no heldFrom) waits like everyone else.
  if (!ready) return { _tag: "None" }
  if (now < lapsesAt(c, v) + lag * c.behindPenaltyMs) return { _tag: "None" }
  if (now < v.nextRenewAt) return { _tag: "None" }
  return { _tag: "Propose", basedOnVersion: v.masterVersion }
}

export const onProposed = (v: LeaseView, basedOnVersion: number, proposalId: number, now: number): LeaseView => ({
  ...v,
  proposing: { basedOnVersion, sentAt: now, proposalId }
})

/**
 * This node proposes Resign (decide said so): it gives the lease up locally at once
 * (heldFrom cleared), and re-sends the Resign until it is chosen or the lease would have ended.
 */
export const onResigning = (c: LeaseConfig, v: LeaseView, basedOnVersion: number, now: number): LeaseView => ({
  ...onProposed(v, basedOnVersion, RESIGN_PROPOSAL_ID, now),
  heldFrom: undefined,
  resignUntil: v.resignUntil ?? (v.heldFrom !== undefined ? v.heldFrom + c.leaseMs - c.marginMs : now)
})

/**
 * A switchover: the holder gives its lease to `successor` (it has fenced itself and its
 * last transactions are in the log). It stops holding at once, like a Resign; the Resign it
 * proposes (and re-proposes, see `decide`) names the successor.
 */
export const onHandOver = (c: LeaseConfig, v: LeaseView, successor: number, now: number): LeaseView => ({
  ...onResigning(c, v, v.masterVersion, now),
  handingTo: successor
})

/**
 * The next time `decide` or `holdsLease` can change with nothing else happening (no entry
 * applied, readiness unchanged; Infinity: none): the caller sleeps until then, and is
 * woken early by those. Deadlines not after `now` are not counted, so `now` must be the
 * reading `decide` was given: a later one could pass a renewal time `decide` did not yet
 * act on, and the renewal would be skipped (see `pauseMs`).
 */
export const nextCheckAt = (c: LeaseConfig, v: LeaseView, now: number): number => {
  let next = Infinity
  const consider = (t: number) => {
    if (t > now && t < next) next = t
  }
  if (v.proposing !== undefined) consider(v.proposing.sentAt + c.proposeTimeoutMs)
  if (holdsLease(c, v, now)) {
    consider(v.nextRenewAt)
    consider(v.heldFrom! + c.leaseMs - c.marginMs)
  } else if (resigning(c, v, now)) {
    consider(v.resignUntil!)
  } else {
    consider(lapsesAt(c, v))
    consider(v.nextRenewAt)
  }
  return next
}

/** Bounds on the lease loop's sleep: never a busy loop, and a look at least once a second. */
const MIN_PAUSE_MS = 5
const MAX_PAUSE_MS = 1_000

/**
 * How long the lease loop sleeps after a step (woken earlier by an applied entry or a
 * readiness change), from `now`. Which deadline is next is judged at `decidedAt`, the clock
 * reading the step decided with, not a fresh one: a timer may fire a little before the
 * renewal time, so that `decide` says "not yet"; a reading taken after the step could then
 * be past that time, which `nextCheckAt` does not count, and the loop slept until the lease
 * ran out (seen on a loaded machine). The time the step took is taken off the sleep.
 */
export const pauseMs = (c: LeaseConfig, v: LeaseView, decidedAt: number, now = decidedAt): number =>
  Math.max(MIN_PAUSE_MS, decidedAt + Math.min(MAX_PAUSE_MS, Math.max(MIN_PAUSE_MS, nextCheckAt(c, v, decidedAt) - decidedAt)) - now)
