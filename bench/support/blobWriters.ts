/** The catch-up benchmarks' load: connections committing one large row at a time. */
import { Effect } from "effect"
import { randomBytes } from "node:crypto"
import mysql from "mysql2/promise"
import { APP_PASSWORD, APP_USER } from "../../test/support/dbCluster.js"

/**
 * `writers` connections each INSERT one row of `rowBytes` into `database`.t (b LONGBLOB) at
 * a time, as a prepared statement's parameter (sent as bytes, not as a hex literal the
 * client formats and the server parses), until stopped, for at most `maxMs` and a million rows each. A failed commit
 * reconnects after 50 ms; `acks` holds when each commit was acknowledged. With `maxTps`,
 * commits start at most that often (all writers together).
 */
export const startBlobWriters = (options: {
  readonly port: number
  readonly database: string
  readonly writers: number
  readonly rowBytes: number
  readonly maxMs: number
  readonly maxTps?: number | undefined
}) => {
  const acks: Array<number> = []
  const state = { stop: false, errors: 0, messages: new Map<string, number>() }
  const deadline = performance.now() + options.maxMs
  const loops = Array.from({ length: options.writers }, async () => {
    const row = randomBytes(options.rowBytes)
    let conn: mysql.Connection | undefined
    const everyMs = options.maxTps !== undefined ? (options.writers * 1000) / options.maxTps : 0
    let nextAt = performance.now()
    for (let n = 0; !state.stop && performance.now() < deadline && n < 1_000_000; n++) {
      if (everyMs > 0) {
        const wait = nextAt - performance.now()
        if (wait > 0) await new Promise((r) => setTimeout(r, wait))
        nextAt = Math.max(nextAt, performance.now() - everyMs) + everyMs
      }
      try {
        conn ??= await mysql.createConnection({ host: "127.0.0.1", port: options.port, user: APP_USER, password: APP_PASSWORD, database: options.database })
        await conn.execute("INSERT INTO t (b) VALUES (?)", [row])
        acks.push(performance.now())
      } catch (e) {
        state.errors++
        const message = e instanceof Error ? e.message : String(e)
        state.messages.set(message, (state.messages.get(message) ?? 0) + 1)
        conn?.destroy()
        conn = undefined
        await new Promise((r) => setTimeout(r, 50))
      }
    }
    conn?.destroy()
  })
  return {
    acks,
    state,
    stop: Effect.promise(() => {
      state.stop = true
      return Promise.all(loops)
    })
  }
}

export const countBetween = (xs: ReadonlyArray<number>, from: number, to: number) => xs.filter((t) => t >= from && t < to).length
