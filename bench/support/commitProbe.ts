/**
 * Commit latency of one connection: autocommit single-row INSERTs one after another for a
 * while, as an application with no concurrency sees them.
 */
import { Data, Effect } from "effect"
import mysql from "mysql2/promise"

export class ProbeError extends Data.TaggedError("ProbeError")<{ readonly message: string }> {}

export interface ProbeResult {
  readonly commits: number
  readonly p50Ms: number
  readonly p99Ms: number
}

const percentile = (sorted: ReadonlyArray<number>, p: number) =>
  sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!

/** Creates `sbtest.commit_probe` through `port` and inserts into it for `seconds`. */
export const commitProbe = (options: {
  readonly port: number
  readonly user: string
  readonly password: string
  readonly seconds: number
  /** Bound on the number of commits, whatever the time. */
  readonly maxCommits?: number
}) =>
  Effect.tryPromise({
    try: async (): Promise<ProbeResult> => {
      const conn = await mysql.createConnection({ host: "127.0.0.1", port: options.port, user: options.user, password: options.password, database: "sbtest" })
      try {
        await conn.query("CREATE TABLE IF NOT EXISTS commit_probe (id INT AUTO_INCREMENT PRIMARY KEY, v INT NOT NULL)")
        // A few to warm up connections and caches.
        for (let i = 0; i < 20; i++) await conn.query("INSERT INTO commit_probe (v) VALUES (?)", [i])
        const latencies: Array<number> = []
        const deadline = performance.now() + options.seconds * 1000
        const max = options.maxCommits ?? 200_000
        while (performance.now() < deadline && latencies.length < max) {
          const t0 = performance.now()
          await conn.query("INSERT INTO commit_probe (v) VALUES (?)", [latencies.length])
          latencies.push(performance.now() - t0)
        }
        latencies.sort((a, b) => a - b)
        return { commits: latencies.length, p50Ms: percentile(latencies, 50), p99Ms: percentile(latencies, 99) }
      } finally {
        conn.destroy()
      }
    },
    catch: (e) => new ProbeError({ message: `commit probe on port ${options.port}: ${e instanceof Error ? e.message : String(e)}` })
  })
