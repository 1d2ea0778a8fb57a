import { describe, expect, it } from "@effect/vitest"
import { Histogram } from "../src/domain/metrics/histogram.js"
import { render, type MetricsSample } from "../src/services/admin/Metrics.js"
import { parsePrometheus } from "./support/prometheus.js"

const histogram = (...ms: ReadonlyArray<number>) => {
  const h = new Histogram()
  for (const x of ms) h.record(x)
  return h
}

const sample = (overrides: Partial<MetricsSample> = {}): MetricsSample => ({
  clusterId: "c\"1",
  nodeId: 2,
  version: "0.1.0",
  paxos: {
    role: "leader",
    chosenUpTo: 120,
    compactedBelow: 7,
    needsInstall: false,
    counters: { proposed: 50, batches: 20, batchedValues: 45, prepares: 1, acceptRetransmits: 3, superseded: 2, proposeTimeouts: 0 },
    writeMs: histogram(0.2, 0.3, 4),
    roundMs: histogram(1, 2, 3, 40),
    peers: [{ nodeId: 1, reachable: true }, { nodeId: 3, reachable: false }]
  },
  cluster: { master: 2, epoch: 5, lastGtidSeq: 900, appliedInstance: 119, membership: "voter" },
  lease: { held: true, remainingMs: 1500 },
  commit: {
    stages: { replicated: histogram(1, 1.5, 2, 20), total: histogram(2, 3, 4, 30) },
    entries: 3,
    transactions: 4,
    bytes: 4096
  },
  database: { role: "master", up: true, diverged: false, lag: null, lagSeconds: null, roleChanges: 4, rebuild: null },
  proxy: { rw: { open: 2, accepted: 10, refused: 1, bytesIn: 1000, bytesOut: 5000 }, ro: { open: 0, accepted: 3, refused: 0, bytesIn: 10, bytesOut: 20 } },
  storage: { paxosLogBytes: 1 << 20, stateBytes: 4096, binlogBytes: 8192 },
  process: { cpuSeconds: 1.5, residentBytes: 100e6, heapUsedBytes: 20e6, startTimeSeconds: 1.7e9, eventLoopDelayP99Seconds: 0.002 },
  ...overrides
})

describe("metrics", () => {
  it("renders every series in the Prometheus text format, through Effect's exporter", () => {
    const scrape = parsePrometheus(render(sample()))
    expect(scrape.value("phxmaria_info", { node: "2", cluster: "c\"1" })).toBe(1)
    expect(scrape.types.get("phxmaria_commits_total")).toBe("counter")
    expect(scrape.value("phxmaria_commits_total")).toBe(4)
    expect(scrape.value("phxmaria_master_terms_total")).toBe(5)
    expect(scrape.value("phxmaria_lease_remaining_seconds")).toBe(1.5)
    expect(scrape.value("phxmaria_paxos_batches_total")).toBe(20)
    expect(scrape.value("phxmaria_peer_reachable", { peer: "3" })).toBe(0)
    expect(scrape.value("phxmaria_database_role", { role: "master" })).toBe(1)
    expect(scrape.value("phxmaria_database_role", { role: "replica" })).toBe(0)
    expect(scrape.value("phxmaria_proxy_bytes_total", { listener: "rw", direction: "out" })).toBe(5000)
    expect(scrape.value("phxmaria_store_bytes", { store: "mariadb_binlog" })).toBe(8192)
    // No lag series on a master (it has none).
    expect(scrape.all("phxmaria_replica_lag_seconds")).toEqual([])
  })

  it("histograms: cumulative buckets in seconds, +Inf equal to the count, the sum in seconds", () => {
    const scrape = parsePrometheus(render(sample()))
    expect(scrape.types.get("phxmaria_commit_stage_seconds")).toBe("histogram")
    const buckets = scrape.all("phxmaria_commit_stage_seconds_bucket", { stage: "total" })
    const counts = buckets.map((b) => b.value)
    expect(counts).toEqual([...counts].sort((a, b) => a - b))
    expect(buckets.find((b) => b.labels.le === "+Inf")!.value).toBe(4)
    expect(scrape.value("phxmaria_commit_stage_seconds_count", { stage: "total" })).toBe(4)
    expect(scrape.value("phxmaria_commit_stage_seconds_sum", { stage: "total" })).toBeCloseTo(0.039, 6)
    // 2, 3 and 4 ms are at or below 5 ms (a bucket is ~9 % wide); 30 ms is not below 25 ms.
    expect(buckets.find((b) => b.labels.le === "0.005")!.value).toBe(3)
    expect(buckets.find((b) => b.labels.le === "0.025")!.value).toBe(3)
    expect(buckets.find((b) => b.labels.le === "0.05")!.value).toBe(4)
  })

  it("a replica's lag and a rebuild's progress", () => {
    const scrape = parsePrometheus(render(sample({
      commit: undefined,
      database: { role: "rebuilding", up: true, diverged: false, lag: 12, lagSeconds: 3.5, roleChanges: 2, rebuild: { phase: "copy", percent: 40, copiedBytes: 123 } }
    })))
    expect(scrape.value("phxmaria_replica_lag_transactions")).toBe(12)
    expect(scrape.value("phxmaria_replica_lag_seconds")).toBe(3.5)
    expect(scrape.value("phxmaria_rebuild_percent", { phase: "copy" })).toBe(40)
    expect(scrape.all("phxmaria_commits_total")).toEqual([])
  })
})
