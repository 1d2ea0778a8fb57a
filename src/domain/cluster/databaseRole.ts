/**
 * The database role machine of one node (docs/architecture.md, "The database role"), as
 * pure decisions: given what the role loop sees, which step comes next. NodeDatabase
 * carries the steps out against MariaDB; test/database-role-sim.test.ts drives these
 * functions against a model of the lease and the server over seeds.
 *
 *   starting ──calibrate──> replica ──lease──> promoting ──opened──> master
 *    ^  ^          │                              │                     │
 *    │  │          └──> diverged                  └─────── step down <──┘
 *    │  └──── a failed step (from anything but replica / diverged)
 *    └──── rebuild (a managed server, when allowed): a new datadir, the chosen log replayed
 */

export type DbRole = "starting" | "calibrating" | "replica" | "promoting" | "master" | "stepping-down" | "diverged"

/** What the role loop sees at one step. */
export interface RoleObservation {
  readonly role: DbRole
  /** This node holds the master lease in its own count. */
  readonly leaseHeld: boolean
  /** The local mariadbd answers (as far as the agent knows). */
  readonly serverUp: boolean
  /** mariadbd restarted since the current role was set up on it. */
  readonly serverRestarted: boolean
  /** The master pipeline (the promotion, then the commit path) still runs. */
  readonly pipelineRunning: boolean
  /** The master's periodic probe of its own server is due. */
  readonly probeDue: boolean
  /** A diverged server may be rebuilt now (managed, rebuild.auto, not rebuilt too recently). */
  readonly mayRebuild: boolean
  /** An operator asked for a rebuild (POST /rebuild) of this managed server. */
  readonly rebuildRequested: boolean
}

export type RoleStep =
  /** Compare the local binlog with the chosen log (restarting a managed server to truncate); then replica or diverged. */
  | { readonly _tag: "Calibrate" }
  /** Become promoting and start the master pipeline (it opens RW once caught up). */
  | { readonly _tag: "Promote" }
  /** Fence RW first, stop the pipeline, read_only, then calibrate. */
  | { readonly _tag: "StepDown"; readonly reason: string }
  /** Position, lag, divergence and replica threads of a replica. */
  | { readonly _tag: "WatchReplica" }
  /** Ask the master's server something: a hung one must not keep the lease. */
  | { readonly _tag: "ProbeMaster" }
  /** A diverged server, or a replica an operator asked to rebuild: replace it by a peer's copy (or a new one replaying the log), and start over. */
  | { readonly _tag: "Rebuild" }
  | { readonly _tag: "Wait" }

const CALIBRATE: RoleStep = { _tag: "Calibrate" }
const PROMOTE: RoleStep = { _tag: "Promote" }
const WATCH: RoleStep = { _tag: "WatchReplica" }
const PROBE: RoleStep = { _tag: "ProbeMaster" }
const WAIT: RoleStep = { _tag: "Wait" }
const REBUILD: RoleStep = { _tag: "Rebuild" }

export const nextStep = (o: RoleObservation): RoleStep => {
  switch (o.role) {
    case "starting":
      return CALIBRATE
    case "replica":
      // A server that went away or restarted is compared with the log again before anything.
      if (!o.serverUp || o.serverRestarted) return CALIBRATE
      if (o.leaseHeld) return PROMOTE
      // A requested rebuild only of a replica that is not about to serve.
      return o.rebuildRequested ? REBUILD : WATCH
    case "promoting":
    case "master":
      // The lease first: nothing else may delay the fence.
      if (!o.leaseHeld) return { _tag: "StepDown", reason: "the lease is no longer held" }
      if (!o.pipelineRunning) return { _tag: "StepDown", reason: "the commit pipeline stopped" }
      if (!o.serverUp) return { _tag: "StepDown", reason: "mariadbd is down" }
      if (o.serverRestarted) return { _tag: "StepDown", reason: "mariadbd restarted" }
      return o.probeDue ? PROBE : WAIT
    case "diverged":
      return o.mayRebuild || o.rebuildRequested ? REBUILD : WAIT
    // In the middle of a step of their own.
    case "calibrating":
    case "stepping-down":
      return WAIT
  }
}

/** Whether RW may be open in this role: a lease loss then fences at once, before the next step. */
export const mayServeRw = (role: DbRole): boolean => role === "promoting" || role === "master"

/**
 * After a step failed half-way: a role that may have RW open steps down first; a managed
 * server that does not even answer `SELECT 1` is restarted (a hung replica would otherwise
 * fail every step for ever); anything unsettled is redone from the start.
 */
export const afterFailure = (o: {
  readonly role: DbRole
  readonly serverAnswers: boolean
  readonly managed: boolean
}): { readonly stepDown: boolean; readonly restartServer: boolean; readonly next: (roleAfterStepDown: DbRole) => DbRole } => {
  const restartServer = o.managed && !o.serverAnswers && o.role !== "diverged"
  return {
    stepDown: mayServeRw(o.role),
    restartServer,
    next: (role) => (restartServer ? "starting" : role === "diverged" || role === "replica" ? role : "starting")
  }
}

/** How far a rebuild's replay has come: of the `target` transactions the log had when it began. */
export const rebuildProgress = (o: {
  readonly reason: string
  readonly elapsedMs: number
  readonly applied: number
  readonly target: number
}) => {
  const elapsedS = Math.max(o.elapsedMs, 1) / 1000
  const applied = Math.min(o.applied, o.target)
  const txnsPerS = applied / elapsedS
  return {
    reason: o.reason,
    phase: "replay" as const,
    elapsedS: Math.round(elapsedS * 10) / 10,
    appliedTxns: applied,
    targetTxns: o.target,
    percent: o.target === 0 ? 100 : Math.round((1000 * applied) / o.target) / 10,
    txnsPerS: Math.round(txnsPerS * 10) / 10,
    etaS: applied >= o.target ? 0 : txnsPerS > 0 ? Math.round((o.target - applied) / txnsPerS) : null
  }
}

/** How far a rebuild's copy from a peer has come, in bytes of the donor's datadir (an estimate: the copy may differ a little). */
export const copyProgress = (o: {
  readonly reason: string
  readonly donor: number
  readonly elapsedMs: number
  readonly copiedBytes: number
  readonly totalBytes: number
}) => {
  const elapsedS = Math.max(o.elapsedMs, 1) / 1000
  const MB = 1024 * 1024
  const mbPerS = o.copiedBytes / MB / elapsedS
  const left = Math.max(o.totalBytes - o.copiedBytes, 0) / MB
  return {
    reason: o.reason,
    phase: "copy" as const,
    donor: o.donor,
    elapsedS: Math.round(elapsedS * 10) / 10,
    copiedMb: Math.round((10 * o.copiedBytes) / MB) / 10,
    totalMb: Math.round((10 * o.totalBytes) / MB) / 10,
    percent: o.totalBytes === 0 ? 0 : Math.min(100, Math.round((1000 * o.copiedBytes) / o.totalBytes) / 10),
    mbPerS: Math.round(mbPerS * 10) / 10,
    etaS: left === 0 ? 0 : mbPerS > 0 ? Math.round(left / mbPerS) : null,
    appliedTxns: 0,
    targetTxns: 0,
    txnsPerS: 0
  }
}

/** What the lease may count on: the master while it serves, or a replica with nothing left to apply. */
export const readinessOf = (role: DbRole, lag: number | null): { readonly ready: boolean; readonly lag: number } => ({
  ready: mayServeRw(role) || (role === "replica" && lag === 0),
  lag: lag ?? 1_000_000
})

/**
 * How long the role loop waits before its next step (a lease event wakes it sooner): a
 * replica behind a log that keeps moving is checked at a moderate pace, one behind a log
 * that stands still closely (it reports itself ready for election as soon as it caught
 * up), anything else at the idle pace.
 */
export const pauseMs = (o: {
  readonly role: DbRole
  readonly lag: number | null
  readonly logMoved: boolean
  readonly tickMs: number
  readonly idleTickMs: number
  readonly busyReplicaTickMs: number
}): number => o.role !== "replica" || o.lag === 0 ? o.idleTickMs : o.logMoved ? o.busyReplicaTickMs : o.tickMs
