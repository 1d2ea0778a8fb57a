/**
 * GET /metrics: this node in the Prometheus text format (docs/operations.md, "Metrics"),
 * through Effect's Metric and its Prometheus exporter. Every series is read when scraped
 * from what the services already keep (their counters and histograms), so nothing is added
 * to the commit path: a scrape builds a fresh registry of pull-based series over one sample.
 */
import { Context, Metric } from "effect"
import { PrometheusMetrics } from "effect/observability"
import type { Histogram } from "../../domain/metrics/histogram.js"
import type { DbRole } from "../../domain/cluster/databaseRole.js"

/** Latency buckets (seconds): 100 µs to 10 s. */
const LATENCY_BOUNDARIES_MS = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000]

export interface ProxyListenerSample {
  readonly open: number
  readonly accepted: number
  readonly refused: number
  readonly bytesIn: number
  readonly bytesOut: number
}

/** One reading of everything /metrics reports. */
export interface MetricsSample {
  readonly clusterId: string
  readonly nodeId: number
  readonly version: string
  readonly paxos: {
    readonly role: string
    readonly chosenUpTo: number
    readonly compactedBelow: number
    readonly needsInstall: boolean
    readonly counters: {
      readonly proposed: number
      readonly batches: number
      readonly batchedValues: number
      readonly prepares: number
      readonly acceptRetransmits: number
      readonly superseded: number
      readonly proposeTimeouts: number
    }
    readonly writeMs: Histogram
    readonly roundMs: Histogram
    /** The log's other members, and whether this node reaches each. */
    readonly peers: ReadonlyArray<{ readonly nodeId: number; readonly reachable: boolean }>
  }
  readonly cluster: {
    readonly master: number | null
    readonly epoch: number
    readonly lastGtidSeq: number
    readonly appliedInstance: number
    readonly membership: string
  }
  readonly lease: { readonly held: boolean; readonly remainingMs: number }
  /** The master's commit path (every term of this node as master). */
  readonly commit?: {
    readonly stages: Readonly<Record<string, Histogram>>
    readonly entries: number
    readonly transactions: number
    readonly bytes: number
  } | undefined
  readonly database?: {
    readonly role: string
    readonly up: boolean
    readonly diverged: boolean
    readonly lag: number | null
    readonly lagSeconds: number | null
    readonly roleChanges: number
    readonly rebuild: { readonly phase: string; readonly percent: number; readonly copiedBytes: number | undefined } | null
  } | undefined
  readonly proxy?: Readonly<Record<string, ProxyListenerSample>> | undefined
  readonly storage: {
    readonly paxosLogBytes: number
    readonly stateBytes: number
    readonly binlogBytes: number | null
  }
  readonly process: {
    readonly cpuSeconds: number
    readonly residentBytes: number
    readonly heapUsedBytes: number
    readonly startTimeSeconds: number
    readonly eventLoopDelayP99Seconds: number
  }
}

type Attributes = Readonly<Record<string, string>>

/** Every database role (domain/cluster/databaseRole.ts), each a series of its own. */
const DB_ROLES: ReadonlyArray<DbRole> = ["starting", "calibrating", "replica", "promoting", "master", "stepping-down", "diverged"]

/** The sample in the Prometheus text format (version 0.0.4). */
export const render = (s: MetricsSample): string => {
  const registry: Metric.MetricRegistry = new Map()
  const context = Context.make(Metric.MetricRegistry, registry)
  const constant = <State>(metric: Metric.Metric<never, State>, state: State) =>
    void Metric.registerUnsafe(metric as Metric.Metric<unknown, State>, context, { get: () => state, update: () => {}, modify: () => {} })
  const gauge = (name: string, description: string, value: number, attributes?: Attributes) =>
    constant(Metric.gauge(name, { description, attributes }) as unknown as Metric.Metric<never, Metric.GaugeState<number>>, { value })
  const counter = (name: string, description: string, count: number, attributes?: Attributes) =>
    constant(Metric.counter(name, { description, attributes }) as unknown as Metric.Metric<never, Metric.CounterState<number>>, { count, incremental: true })
  const latency = (name: string, description: string, h: Histogram, attributes?: Attributes) => {
    const c = h.cumulative(LATENCY_BOUNDARIES_MS)
    const metric = Metric.histogram(name, { description, attributes, boundaries: LATENCY_BOUNDARIES_MS.map((b) => b / 1000) })
    constant(metric as unknown as Metric.Metric<never, Metric.HistogramState>, {
      buckets: c.buckets.map(([b, n]) => [b / 1000, n] as [number, number]),
      count: c.count,
      min: 0,
      max: c.maxMs / 1000,
      sum: c.sumMs / 1000
    })
  }
  const bool = (b: boolean) => (b ? 1 : 0)

  gauge("phxmaria_info", "This agent: its cluster, node id and version (always 1).", 1, { cluster: s.clusterId, node: String(s.nodeId), version: s.version })

  // The log.
  const p = s.paxos
  gauge("phxmaria_paxos_leader", "1 when this node leads the Paxos log (it places values in instances).", bool(p.role === "leader"))
  gauge("phxmaria_paxos_chosen_instances", "The log's chosen prefix on this node: instances below it are chosen.", p.chosenUpTo)
  gauge("phxmaria_paxos_compacted_below", "Where this node's stored log starts (instances below it were compacted away).", p.compactedBelow)
  gauge("phxmaria_paxos_needs_install", "1 when every peer ahead compacted past this node: it needs a copy (rebuild).", bool(p.needsInstall))
  counter("phxmaria_paxos_values_proposed_total", "Values proposed on this node (binlog entries, lease renewals, ...).", p.counters.proposed)
  counter("phxmaria_paxos_batches_total", "Instances this node filled with values as leader (one Accept round each).", p.counters.batches)
  counter("phxmaria_paxos_batched_values_total", "Values in those instances (values / batches = batching).", p.counters.batchedValues)
  counter("phxmaria_paxos_prepares_total", "Phase-1 (leadership) attempts this node started.", p.counters.prepares)
  counter("phxmaria_paxos_accept_retransmits_total", "Accepts sent again to voters that had not answered.", p.counters.acceptRetransmits)
  counter("phxmaria_paxos_proposals_superseded_total", "This node's proposals whose instance took another value (the caller proposes again).", p.counters.superseded)
  counter("phxmaria_paxos_propose_timeouts_total", "Proposals that were not chosen within the propose timeout.", p.counters.proposeTimeouts)
  latency("phxmaria_paxos_write_seconds", "Durable writes of the log: issued to synced.", p.writeMs)
  latency("phxmaria_paxos_round_seconds", "As leader: an instance's first Accept until its value is chosen.", p.roundMs)
  for (const peer of p.peers) gauge("phxmaria_peer_reachable", "1 when this node has a live connection to that member.", bool(peer.reachable), { peer: String(peer.nodeId) })

  // The replicated state: master, lease, terms.
  const c = s.cluster
  gauge("phxmaria_master_node", "The master the log names (0: none).", c.master ?? 0)
  counter("phxmaria_master_terms_total", "Master terms begun in the cluster's life (the epoch): each election or switchover adds one.", c.epoch)
  gauge("phxmaria_last_gtid_sequence", "Sequence number of the log's last transaction (its rate is the cluster's commit rate).", c.lastGtidSeq)
  gauge("phxmaria_applied_instances", "The state machine applied the log up to here.", c.appliedInstance)
  gauge("phxmaria_member", "This node's place in the log's membership (1 for its kind: voter, learner or not a member).", 1, { kind: c.membership })
  gauge("phxmaria_lease_held", "1 while this node holds the master lease.", bool(s.lease.held))
  gauge("phxmaria_lease_remaining_seconds", "Time left on this node's master lease (0 when it holds none).", s.lease.held ? s.lease.remainingMs / 1000 : 0)

  // The commit path, as master.
  if (s.commit !== undefined) {
    for (const [stage, h] of Object.entries(s.commit.stages)) {
      latency("phxmaria_commit_stage_seconds", "Where a commit's time goes on the master, by stage: queued, replicated (Paxos), applied, acked, total.", h, { stage })
    }
    counter("phxmaria_commits_total", "Transactions committed through this node as master.", s.commit.transactions)
    counter("phxmaria_commit_bytes_total", "Binlog bytes of those transactions.", s.commit.bytes)
    counter("phxmaria_commit_entries_total", "Log entries they went in (transactions / entries = group commit).", s.commit.entries)
  }

  // The local database.
  const d = s.database
  if (d !== undefined) {
    for (const role of DB_ROLES) {
      gauge("phxmaria_database_role", "1 for this node's database role.", bool(d.role === role), { role })
    }
    gauge("phxmaria_database_up", "1 while this node's MariaDB answers.", bool(d.up))
    gauge("phxmaria_database_diverged", "1 when this node's database holds what the log does not (it is set aside and rebuilt).", bool(d.diverged))
    counter("phxmaria_database_role_changes_total", "Database role changes since this agent started.", d.roleChanges)
    if (d.lag !== null) gauge("phxmaria_replica_lag_transactions", "Chosen transactions this node's MariaDB has not applied yet.", d.lag)
    if (d.lagSeconds !== null) gauge("phxmaria_replica_lag_seconds", "How long ago the first transaction this replica lacks was chosen.", d.lagSeconds)
    gauge("phxmaria_rebuild_in_progress", "1 while this node's database is being rebuilt.", bool(d.rebuild !== null))
    if (d.rebuild !== null) {
      gauge("phxmaria_rebuild_percent", "A rebuild's progress in its phase (copy, then replay).", d.rebuild.percent, { phase: d.rebuild.phase })
      if (d.rebuild.copiedBytes !== undefined) gauge("phxmaria_rebuild_copied_bytes", "Bytes of a peer's copy received so far.", d.rebuild.copiedBytes)
    }
  }

  // The proxy ports.
  for (const [listener, l] of Object.entries(s.proxy ?? {})) {
    const at = { listener }
    gauge("phxmaria_proxy_connections_open", "Client connections open now, by port (rw, ro, forwardRw, forwardRo).", l.open, at)
    counter("phxmaria_proxy_connections_accepted_total", "Client connections accepted, by port.", l.accepted, at)
    counter("phxmaria_proxy_connections_refused_total", "Client connections refused (no master, too many, diverged, unreachable, not a member), by port.", l.refused, at)
    counter("phxmaria_proxy_bytes_total", "Bytes relayed, by port and direction (in: client to server).", l.bytesIn, { ...at, direction: "in" })
    counter("phxmaria_proxy_bytes_total", "Bytes relayed, by port and direction (in: client to server).", l.bytesOut, { ...at, direction: "out" })
  }

  // Storage.
  gauge("phxmaria_store_bytes", "Bytes on disk, by store: the Paxos log, the cluster state, MariaDB's binlog.", s.storage.paxosLogBytes, { store: "paxos_log" })
  gauge("phxmaria_store_bytes", "Bytes on disk, by store: the Paxos log, the cluster state, MariaDB's binlog.", s.storage.stateBytes, { store: "state" })
  if (s.storage.binlogBytes !== null) gauge("phxmaria_store_bytes", "Bytes on disk, by store: the Paxos log, the cluster state, MariaDB's binlog.", s.storage.binlogBytes, { store: "mariadb_binlog" })

  // The agent process.
  counter("process_cpu_seconds_total", "CPU time of this agent (user and system), in seconds.", s.process.cpuSeconds)
  gauge("process_resident_memory_bytes", "Resident memory of this agent.", s.process.residentBytes)
  gauge("process_start_time_seconds", "When this agent started, in seconds since the epoch.", s.process.startTimeSeconds)
  gauge("nodejs_heap_used_bytes", "V8 heap in use.", s.process.heapUsedBytes)
  gauge("nodejs_eventloop_delay_p99_seconds", "99th percentile of the event loop's delay over the last 30 s window (how late timers and sockets are served).", s.process.eventLoopDelayP99Seconds)

  return PrometheusMetrics.formatUnsafe(context)
}
