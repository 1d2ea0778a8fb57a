/**
 * Health as load balancers, orchestrators and operators ask it (docs/operations.md,
 * "Health endpoints"): of one node, from its own status report, and of the whole cluster,
 * from every member's report. Pure: the caller gathers the reports.
 */
import type { NodeStatus } from "./nodeStatus.js"

/** A replica this many seconds behind (or more) makes the cluster "degraded". */
export const DEGRADED_LAG_SECONDS = 30

/** Whether this node serves read-write now: it holds the lease and (with a database) its MariaDB serves as master. */
export const isPrimary = (s: NodeStatus): boolean =>
  s.role === "master" && (s.database === undefined || (s.database.role === "master" && s.database.up && s.database.diverged === null))

/** Whether this node's database serves reads as a replica (not diverged, not rebuilding). */
export const servesReads = (s: NodeStatus): boolean =>
  s.database !== undefined && s.database.role === "replica" && s.database.up && s.database.diverged === null && s.database.rebuild == null

/**
 * Whether this node reaches a majority of the log's voters (itself included). One that does
 * not sees no new transactions, so its lag reads 0 while its reads grow arbitrarily stale.
 */
export const reachesQuorum = (s: NodeStatus): boolean => {
  const voters = s.members.filter((m) => m.voter !== false)
  const reached = voters.filter((m) => m.reachable || m.nodeId === s.nodeId).length
  return voters.length === 0 || reached * 2 > voters.length
}

/** Why this node is not healthy (its agent answers, but its database does not serve), or undefined. */
export const unhealthyReason = (s: NodeStatus): string | undefined => {
  if (s.membership === "not a member") return "removed from the cluster (its ports refuse every connection)"
  const d = s.database
  if (d === undefined) return undefined
  if (d.diverged !== null) return `database diverged: ${d.diverged}`
  if (!d.up) return "database down"
  if (d.rebuild != null) return `database rebuilding (${d.rebuild.reason}, ${d.rebuild.percent}%)`
  if (d.role !== "master" && d.role !== "replica") return `database ${d.role}`
  return undefined
}

/** A replica within a lag bound: `maxLag` transactions and/or `maxLagSeconds` (absent: any lag). */
export const replicaWithin = (s: NodeStatus, bound: { readonly maxLag?: number | undefined; readonly maxLagSeconds?: number | undefined }): boolean => {
  if (!servesReads(s) || s.membership === "not a member" || !reachesQuorum(s)) return false
  const d = s.database!
  if (bound.maxLag !== undefined && (d.lag === null || d.lag > bound.maxLag)) return false
  if (bound.maxLagSeconds !== undefined && (d.lagSeconds == null || d.lagSeconds > bound.maxLagSeconds)) return false
  return true
}

export type HealthCode = 0 | 1 | 2

export interface ClusterHealth {
  /** 0: a master serves and every member is healthy; 1: degraded; 2: no master serves. */
  readonly code: HealthCode
  readonly summary: string
  readonly problems: ReadonlyArray<string>
}

/**
 * The members the log names, as the best-informed answering member reports them (the one
 * that applied the most); undefined when no member answers.
 */
export const logMembers = (reports: ReadonlyArray<MemberReport>): ReadonlySet<number> | undefined => {
  const informed = reports.flatMap((r) => ("status" in r && r.status.membership !== "not a member" ? [r.status] : []))
    .sort((a, b) => b.appliedInstance - a.appliedInstance)[0]
  return informed === undefined ? undefined : new Set(informed.members.map((m) => m.nodeId))
}

export type MemberReport =
  | { readonly nodeId: number | null; readonly address: string; readonly status: NodeStatus }
  | { readonly nodeId: number | null; readonly address: string; readonly error: string }

/** The cluster's health from every member's report (a member that did not answer is down). */
export const clusterHealth = (reports: ReadonlyArray<MemberReport>): ClusterHealth => {
  const problems: Array<string> = []
  const up = reports.flatMap((r) => ("status" in r ? [r.status] : []))
  const answering = new Set(up.map((s) => s.nodeId))
  const name = (r: MemberReport) => (r.nodeId === null ? r.address : `node ${r.nodeId}`)
  for (const r of reports) {
    if (!("status" in r)) {
      problems.push(`${name(r)}: DOWN (${r.error})`)
      continue
    }
    const s = r.status
    const why = unhealthyReason(s)
    if (why !== undefined) problems.push(`${name(r)}: ${why}`)
    else if (s.database?.lagSeconds != null && s.database.lagSeconds >= DEGRADED_LAG_SECONDS) {
      problems.push(`${name(r)}: replica ${s.database.lagSeconds} s behind (${s.database.lag ?? "?"} transactions)`)
    }
    if (s.membership === "learner") problems.push(`${name(r)}: a learner (being added; it does not vote yet)`)
    // A peer that answers us but not this node: a partition (a peer that is down is reported as such).
    const unreached = s.members.filter((m) => m.nodeId !== s.nodeId && !m.reachable && answering.has(m.nodeId)).map((m) => m.nodeId)
    if (unreached.length > 0) problems.push(`${name(r)}: does not reach node${unreached.length > 1 ? "s" : ""} ${unreached.join(", ")}`)
  }
  const masters = up.filter((s) => s.role === "master")
  const serving = masters.filter(isPrimary)
  if (serving.length === 0) {
    const summary = masters.length > 0
      ? `no master serves: node ${masters.map((s) => s.nodeId).join(", ")} holds the lease but its database is not open for writes (promotion under way?)`
      : up.length === 0
      ? "no member answers"
      : "no master (election in progress or no majority)"
    return { code: 2, summary, problems }
  }
  if (masters.length > 1) problems.unshift(`several nodes report master: ${masters.map((s) => s.nodeId).join(", ")} (a stale view; it settles within a lease)`)
  const master = serving[0]!
  return problems.length === 0
    ? { code: 0, summary: `healthy: master node ${master.nodeId} (epoch ${master.epoch}), ${reports.length} member${reports.length === 1 ? "" : "s"}`, problems }
    : { code: 1, summary: `degraded: master node ${master.nodeId} (epoch ${master.epoch}); ${problems.length} problem${problems.length === 1 ? "" : "s"}`, problems }
}
