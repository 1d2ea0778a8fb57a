/** What GET /status returns, and the readable table `status` prints from it. */
import { Schema } from "effect"
import type { ClusterHealth } from "./health.js"

/** A latency histogram's summary (domain/histogram.ts), in milliseconds. */
const HistogramSummarySchema = Schema.Struct({
  count: Schema.Number,
  meanMs: Schema.Number,
  p50Ms: Schema.Number,
  p90Ms: Schema.Number,
  p99Ms: Schema.Number,
  maxMs: Schema.Number
})

export const NodeStatus = Schema.Struct({
  clusterId: Schema.String,
  nodeId: Schema.Int,
  role: Schema.Literals(["master", "replica"]),
  master: Schema.NullOr(Schema.Int),
  epoch: Schema.Int,
  leaseRemainingMs: Schema.Number,
  paxos: Schema.Struct({
    role: Schema.String,
    chosenUpTo: Schema.Int,
    lastChosenInstance: Schema.Int,
    /** Durable writes, issued to synced, and (as leader) an instance's first Accept to chosen. */
    writeMs: Schema.optional(HistogramSummarySchema),
    roundMs: Schema.optional(HistogramSummarySchema),
    /** Where the stored log starts (compaction) and the bytes of its files. */
    compactedBelow: Schema.optional(Schema.Int),
    logBytes: Schema.optional(Schema.Number),
    /** Set when every peer ahead compacted past this node: it needs a copy (rebuild) from there. */
    needsInstall: Schema.optional(Schema.NullOr(Schema.Int))
  }),
  appliedInstance: Schema.Int,
  lastGtid: Schema.NullOr(Schema.String),
  /** This node's MariaDB (absent on a node without one). */
  database: Schema.optional(Schema.Struct({
    role: Schema.String,
    localGtid: Schema.NullOr(Schema.String),
    lag: Schema.NullOr(Schema.Number),
    /** Seconds since the first transaction this replica lacks was chosen (0: caught up; null: unknown). */
    lagSeconds: Schema.optional(Schema.NullOr(Schema.Number)),
    /** Database role changes since the agent started. */
    roleChanges: Schema.optional(Schema.Number),
    up: Schema.Boolean,
    diverged: Schema.NullOr(Schema.String),
    replicationError: Schema.NullOr(Schema.String),
    /**
     * A rebuild under way until it has caught up. Phase "copy": bytes of a peer's copy
     * (`donor`) received, of about `totalMb`; then "replay": transactions applied of those
     * the log had when it began. Each with the rate and the time left.
     */
    rebuild: Schema.optional(Schema.NullOr(Schema.Struct({
      reason: Schema.String,
      phase: Schema.optional(Schema.Literals(["copy", "replay"])),
      donor: Schema.optional(Schema.Int),
      copiedMb: Schema.optional(Schema.Number),
      totalMb: Schema.optional(Schema.Number),
      mbPerS: Schema.optional(Schema.Number),
      elapsedS: Schema.Number,
      appliedTxns: Schema.Number,
      targetTxns: Schema.Number,
      percent: Schema.Number,
      txnsPerS: Schema.Number,
      etaS: Schema.NullOr(Schema.Number)
    })))
  })),
  /**
   * Where the master's commits spend their time (every term of this node as master), per
   * stage: queued, replicated, applied, acked, total. Summaries in milliseconds.
   */
  commitPath: Schema.optional(Schema.Struct({
    entries: Schema.Number,
    transactions: Schema.Number,
    bytes: Schema.Number,
    txnsPerEntry: Schema.Number,
    stages: Schema.Record(Schema.String, HistogramSummarySchema)
  })),
  /** This agent's process memory (MB): resident, the V8 heap (reserved and in use), and memory outside it (buffers). */
  memory: Schema.optional(Schema.Struct({ rssMb: Schema.Number, heapTotalMb: Schema.Number, heapUsedMb: Schema.Number, externalMb: Schema.Number })),
  /** Proxy connection counts per listener and per upstream. */
  proxy: Schema.optional(Schema.Struct({
    listeners: Schema.Record(Schema.String, Schema.Struct({
      open: Schema.Number,
      accepted: Schema.Number,
      refused: Schema.Number,
      buffered: Schema.Number,
      bytesIn: Schema.optional(Schema.Number),
      bytesOut: Schema.optional(Schema.Number)
    })),
    upstreams: Schema.Record(Schema.String, Schema.Number),
    routes: Schema.Struct({ rw: Schema.String, ro: Schema.String })
  })),
  /** This node in the log's membership: it votes, it only learns, or it is no member (removed). */
  membership: Schema.optional(Schema.Literals(["voter", "learner", "not a member"])),
  /** The log's members (the config's until a Membership is chosen). */
  members: Schema.Array(Schema.Struct({
    nodeId: Schema.Int,
    host: Schema.String,
    port: Schema.Int,
    adminPort: Schema.Int,
    reachable: Schema.Boolean,
    voter: Schema.optional(Schema.Boolean)
  }))
})
export type NodeStatus = typeof NodeStatus.Type

/** One row per member: its own report, or why it could not be had (`nodeId` null: not known, it never answered). */
export const renderStatusTable = (
  rows: ReadonlyArray<{ readonly nodeId: number | null; readonly address: string; readonly status: NodeStatus | { readonly error: string } }>,
  health?: ClusterHealth
): string => {
  const header = ["node", "admin", "role", "master", "epoch", "lease (ms)", "chosen (inst)", "applied (inst)", "lastGtid", "db", "db gtid", "lag (txns)", "lag (s)", "sees (nodes)"]
  const lines = rows.map(({ address, nodeId, status: s }) =>
    "error" in s
      ? [nodeId === null ? "?" : String(nodeId), address, "DOWN", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", s.error]
      : [
        String(s.nodeId),
        address,
        s.role,
        s.master === null ? "-" : String(s.master),
        String(s.epoch),
        s.role === "master" ? String(s.leaseRemainingMs) : "-",
        String(s.paxos.lastChosenInstance),
        String(s.appliedInstance - 1),
        s.lastGtid ?? "-",
        s.database === undefined
          ? "-"
          : s.database.diverged !== null
          ? "DIVERGED"
          : !s.database.up
          ? "down"
          : s.database.rebuild != null
          ? `rebuild ${s.database.rebuild.percent}%`
          : s.database.role,
        s.database?.localGtid ?? "-",
        s.database?.lag == null ? "-" : String(s.database.lag),
        s.database?.lagSeconds == null ? "-" : String(s.database.lagSeconds),
        s.members.filter((m) => m.reachable).map((m) => m.nodeId).join(",") || "-"
      ]
  )
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)))
  const fmt = (cells: ReadonlyArray<string>) => cells.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd()
  const masters = new Set(rows.flatMap((r) => ("error" in r.status || r.status.role !== "master" ? [] : [r.status.nodeId])))
  const summary = masters.size === 1
    ? `master: node ${[...masters][0]}`
    : masters.size === 0 ? "master: none (election in progress or no majority)" : `master: SEVERAL REPORT MASTER (${[...masters].join(", ")})`
  const diverged = rows.flatMap((r) => ("error" in r.status || r.status.database?.diverged == null ? [] : [`node ${r.status.nodeId} DIVERGED: ${r.status.database.diverged}`]))
  const rebuilding = rows.flatMap((r) => {
    const b = "error" in r.status ? undefined : r.status.database?.rebuild
    if (b == null) return []
    const id = "error" in r.status ? r.nodeId : r.status.nodeId
    return b.phase === "copy"
      ? [`node ${id} rebuilding (${b.reason}): copying from node ${b.donor}, ${b.copiedMb} of ${b.totalMb} MB, ${b.mbPerS} MB/s, about ${b.etaS ?? "?"} s left`]
      : [`node ${id} rebuilding (${b.reason}): ${b.appliedTxns} of ${b.targetTxns} transactions, ${b.txnsPerS}/s, about ${b.etaS ?? "?"} s left`]
  })
  const healthLines = health === undefined ? [] : [`health: ${health.summary}`, ...health.problems.map((p) => `  - ${p}`)]
  return [fmt(header), ...lines.map(fmt), "", summary, ...diverged, ...rebuilding, ...healthLines].join("\n")
}
