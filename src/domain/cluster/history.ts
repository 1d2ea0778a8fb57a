/**
 * What the status page charts: the cluster's commit rate and the master's commit latency,
 * sampled every few seconds into a bounded ring (docs/operations.md, "Status page"). Pure:
 * the caller reads the counters and the clock.
 */
import type { Histogram } from "../metrics/histogram.js"

export interface HistorySample {
  /** Wall-clock time of the sample (epoch ms). */
  readonly t: number
  /** Transactions the log took per second over the interval (every node sees them: the GTID sequence). */
  readonly commitsPerS: number
  /** This node's commits as master over the interval (null: it was not master, or none committed). */
  readonly commitP50Ms: number | null
  readonly commitP99Ms: number | null
  /** This node's replica lag in transactions at the sample (null: no database, or unknown). */
  readonly lagTxns: number | null
}

/** The counters a sample is the difference of. */
export interface HistoryReading {
  readonly t: number
  /** The log's last GTID sequence number (0 before any transaction). */
  readonly gtidSeq: number
  /** The master's commit latency ("total" stage), as recorded so far. */
  readonly commitTotal: Histogram
  readonly lagTxns: number | null
}

const round2 = (x: number) => Math.round(x * 100) / 100

export class History {
  private readonly ring: Array<HistorySample> = []
  private last: { readonly t: number; readonly gtidSeq: number; readonly commitTotal: Histogram } | undefined

  constructor(readonly intervalMs: number, private readonly capacity: number) {}

  /** Adds the sample between the previous reading and this one (the first reading only sets the base). */
  record(r: HistoryReading): void {
    const prev = this.last
    this.last = { t: r.t, gtidSeq: r.gtidSeq, commitTotal: r.commitTotal.copy() }
    if (prev === undefined || r.t <= prev.t) return
    const seconds = (r.t - prev.t) / 1000
    const latency = r.commitTotal.since(prev.commitTotal)
    const some = latency.count > 0
    this.ring.push({
      t: r.t,
      // A sequence that went backwards (a new cluster, a restore) is no rate.
      commitsPerS: round2(Math.max(0, r.gtidSeq - prev.gtidSeq) / seconds),
      commitP50Ms: some ? latency.quantile(0.5) : null,
      commitP99Ms: some ? latency.quantile(0.99) : null,
      lagTxns: r.lagTxns
    })
    if (this.ring.length > this.capacity) this.ring.splice(0, this.ring.length - this.capacity)
  }

  samples(): ReadonlyArray<HistorySample> {
    return this.ring.slice()
  }
}

/**
 * How long a replica has been behind: the time since the first transaction it lacks was
 * chosen. Fed with (log's last sequence, when seen) as the node notices the log move; asked
 * with the replica's own position. Bounded: readings the replica has passed are dropped.
 */
export class LagClock {
  private readonly seen: Array<{ readonly seq: number; readonly at: number }> = []

  /** The log reached `seq` at `at` (ms, any monotonic clock). */
  observe(seq: number, at: number): void {
    const last = this.seen[this.seen.length - 1]
    if (last !== undefined && seq <= last.seq) return
    this.seen.push({ seq, at })
    // Bounded by thinning, never by dropping the oldest: that one says how long the lag has been.
    if (this.seen.length > 4096) {
      const kept = this.seen.filter((_, i) => i === 0 || i % 2 === 1 || i === this.seen.length - 1)
      this.seen.splice(0, this.seen.length, ...kept)
    }
  }

  /** Seconds behind for a replica at `localSeq` (0 when it has everything seen). */
  secondsBehind(localSeq: number, now: number): number {
    while (this.seen.length > 0 && this.seen[0]!.seq <= localSeq) this.seen.shift()
    const first = this.seen[0]
    return first === undefined ? 0 : Math.max(0, Math.round((now - first.at) / 100) / 10)
  }
}
