/**
 * One large transaction (BEGIN, `rows` INSERTs of `rowBytes` each, COMMIT) on one
 * connection while a second connection commits small rows one at a time: how long the
 * large one took, and how the small ones fared meanwhile. Used by the large-transaction
 * test and `npm run bench:bigtxn`. Expects the tables bigTxnSchema creates: `big(id, b LONGBLOB)` and
 * `small(id, v)` in `database`.
 */
import mysql from "mysql2/promise"

export interface BigTxnOptions {
  readonly port: number
  readonly user: string
  readonly password: string
  readonly database: string
  readonly rows: number
  readonly rowBytes: number
}

export interface BigTxnResult {
  /** BEGIN to COMMIT's answer. */
  readonly ms: number
  /** COMMIT alone. */
  readonly commitMs: number
  /** The error the large transaction ended with, if it failed (errno and message). */
  readonly error: { readonly errno: number; readonly message: string } | undefined
  /** Small commits that completed while the large transaction ran. */
  readonly smallCommitsDuring: number
  /** The slowest small commit that ended while it ran. */
  readonly smallCommitMaxMs: number
  /** Small commits that failed (the connection is then given up), and how the first did. */
  readonly smallErrors: number
  readonly smallError: string | undefined
  /** When it began, and when COMMIT was sent (performance.now()). */
  readonly startedAt: number
  readonly commitAt: number
}

export const runBigTxn = async (o: BigTxnOptions): Promise<BigTxnResult> => {
  const login = { host: "127.0.0.1", port: o.port, user: o.user, password: o.password, database: o.database }
  const big = await mysql.createConnection(login)
  const small = await mysql.createConnection(login)
  const state = { running: true, commits: 0, maxMs: 0, errors: 0, error: undefined as string | undefined }
  // Bounded by the large transaction's end, and by count.
  const smallLoop = (async () => {
    for (let n = 0; state.running && n < 1_000_000; n++) {
      const t0 = performance.now()
      try {
        await small.query("INSERT INTO small (v) VALUES (?)", [n])
      } catch (e) {
        state.errors++
        state.error = `after ${Math.round(performance.now() - t0)} ms: ${(e as Error).message}`
        return
      }
      if (!state.running) return
      state.commits++
      state.maxMs = Math.max(state.maxMs, performance.now() - t0)
    }
  })()
  const row = Buffer.alloc(o.rowBytes)
  for (let i = 0; i < row.length; i += 4) row.writeUInt32LE((i * 2654435761) >>> 0, i)
  const t0 = performance.now()
  let commitStart = t0
  let error: BigTxnResult["error"]
  try {
    await big.query("BEGIN")
    for (let i = 0; i < o.rows; i++) await big.query("INSERT INTO big (b) VALUES (?)", [row])
    commitStart = performance.now()
    await big.query("COMMIT")
  } catch (e) {
    const err = e as { errno?: number; message?: string }
    error = { errno: err.errno ?? 0, message: err.message ?? String(e) }
  }
  const end = performance.now()
  state.running = false
  await smallLoop
  big.destroy()
  small.destroy()
  return {
    ms: end - t0,
    commitMs: end - commitStart,
    error,
    smallCommitsDuring: state.commits,
    smallCommitMaxMs: state.maxMs,
    smallErrors: state.errors,
    smallError: state.error,
    startedAt: t0,
    commitAt: commitStart
  }
}

/** The statements creating `database` with the tables runBigTxn writes. */
export const bigTxnSchema = (database: string): ReadonlyArray<string> => [
  `CREATE DATABASE ${database}`,
  `CREATE TABLE ${database}.big (id INT AUTO_INCREMENT PRIMARY KEY, b LONGBLOB NOT NULL)`,
  `CREATE TABLE ${database}.small (id INT AUTO_INCREMENT PRIMARY KEY, v INT NOT NULL)`
]
