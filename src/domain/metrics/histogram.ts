/**
 * Latency histograms with fixed log-scale buckets (about 9 % wide, from 1 microsecond to
 * hours): recording is a few arithmetic operations and memory stays constant, so they
 * can sit on the commit path. Pure data: the caller supplies the measured durations.
 */

/** Buckets per doubling: each bucket spans 2^(1/8), about 9 %. */
const PER_DOUBLING = 8
const BUCKETS = 40 * PER_DOUBLING

export interface HistogramSummary {
  readonly count: number
  readonly meanMs: number
  readonly p50Ms: number
  readonly p90Ms: number
  readonly p99Ms: number
  readonly maxMs: number
}

const round3 = (x: number) => Math.round(x * 1000) / 1000

export class Histogram {
  private readonly counts = new Float64Array(BUCKETS)
  private total = 0
  private sumMs = 0
  private max = 0

  /** Adds `weight` observations of `ms` milliseconds. */
  record(ms: number, weight = 1): void {
    if (!(ms >= 0) || weight <= 0) return
    const us = ms * 1000
    const i = us < 1 ? 0 : Math.min(BUCKETS - 1, Math.floor(Math.log2(us) * PER_DOUBLING) + 1)
    this.counts[i]! += weight
    this.total += weight
    this.sumMs += ms * weight
    if (ms > this.max) this.max = ms
  }

  get count(): number {
    return this.total
  }

  /** The upper bound of the bucket holding quantile `q` (0..1), in ms. */
  quantile(q: number): number {
    if (this.total === 0) return 0
    const rank = q * this.total
    let seen = 0
    for (let i = 0; i < BUCKETS; i++) {
      seen += this.counts[i]!
      if (seen >= rank && this.counts[i]! > 0) return Math.min(this.max, 2 ** (i / PER_DOUBLING) / 1000)
    }
    return this.max
  }

  summary(): HistogramSummary {
    return {
      count: this.total,
      meanMs: this.total === 0 ? 0 : round3(this.sumMs / this.total),
      p50Ms: round3(this.quantile(0.5)),
      p90Ms: round3(this.quantile(0.9)),
      p99Ms: round3(this.quantile(0.99)),
      maxMs: round3(this.max)
    }
  }

  reset(): void {
    this.counts.fill(0)
    this.total = 0
    this.sumMs = 0
    this.max = 0
  }

  /** A copy, to tell later what was recorded since (`since`). */
  copy(): Histogram {
    const h = new Histogram()
    h.counts.set(this.counts)
    h.total = this.total
    h.sumMs = this.sumMs
    h.max = this.max
    return h
  }

  /** What was recorded after `earlier` (a copy of this one); its max is this one's. */
  since(earlier: Histogram): Histogram {
    const h = new Histogram()
    for (let i = 0; i < BUCKETS; i++) h.counts[i] = Math.max(0, this.counts[i]! - earlier.counts[i]!)
    h.total = Math.max(0, this.total - earlier.total)
    h.sumMs = Math.max(0, this.sumMs - earlier.sumMs)
    h.max = this.max
    return h
  }

  /**
   * Cumulative counts at `boundariesMs` (ascending), for a Prometheus histogram: each counts
   * the observations whose bucket ends at or below the boundary (a bucket is ~9 % wide, so
   * an observation just under a boundary may count in the next).
   */
  cumulative(boundariesMs: ReadonlyArray<number>): { readonly buckets: ReadonlyArray<readonly [number, number]>; readonly count: number; readonly sumMs: number; readonly maxMs: number } {
    const buckets: Array<readonly [number, number]> = []
    let i = 0
    let seen = 0
    for (const b of boundariesMs) {
      const us = b * 1000
      while (i < BUCKETS && (i === 0 ? 1 : 2 ** (i / PER_DOUBLING)) <= us) seen += this.counts[i++]!
      buckets.push([b, seen])
    }
    return { buckets, count: this.total, sumMs: this.sumMs, maxMs: this.max }
  }
}

/** Where a committed transaction's time went on the master, stage by stage. */
export interface CommitTimes {
  /** The capture client had the whole transaction from MariaDB. */
  readonly captured: number
  /** Its Binlog entry was handed to the log. */
  readonly proposed: number
  /** A majority accepted the entry (the log said chosen). */
  readonly chosen: number
  /** The state machine applied it (accepted). */
  readonly applied: number
  /** The ACK went to MariaDB. */
  readonly acked: number
}

export const COMMIT_STAGES = ["queued", "replicated", "applied", "acked", "total"] as const
export type CommitStage = typeof COMMIT_STAGES[number]

/**
 * The commit path's histograms: queued (captured -> proposed: waiting for room in the
 * pipeline), replicated (proposed -> chosen: batching, the Paxos round with its fsyncs),
 * applied (chosen -> applied by the state machine), acked (applied -> ACK sent) and total
 * (captured -> ACK sent). One observation per transaction; also entry sizes.
 */
export class CommitPathHistograms {
  readonly stages: Record<CommitStage, Histogram> = {
    queued: new Histogram(),
    replicated: new Histogram(),
    applied: new Histogram(),
    acked: new Histogram(),
    total: new Histogram()
  }
  /** Transactions per Binlog entry. */
  private entries = 0
  private txns = 0
  private bytes = 0

  /** One entry of `txns` transactions: `times` holds each transaction's capture time. */
  recordEntry(capturedAt: ReadonlyArray<number>, rest: Omit<CommitTimes, "captured">, bytes: number): void {
    const s = this.stages
    for (const captured of capturedAt) {
      s.queued.record(rest.proposed - captured)
      s.total.record(rest.acked - captured)
    }
    const n = capturedAt.length
    s.replicated.record(rest.chosen - rest.proposed, n)
    s.applied.record(rest.applied - rest.chosen, n)
    s.acked.record(rest.acked - rest.applied, n)
    this.entries++
    this.txns += n
    this.bytes += bytes
  }

  report() {
    return {
      entries: this.entries,
      transactions: this.txns,
      bytes: this.bytes,
      txnsPerEntry: this.entries === 0 ? 0 : Math.round((this.txns / this.entries) * 100) / 100,
      stages: Object.fromEntries(COMMIT_STAGES.map((k) => [k, this.stages[k].summary()])) as Record<CommitStage, HistogramSummary>
    }
  }
}
export type CommitPathReport = ReturnType<CommitPathHistograms["report"]>
