/**
 * The mysql2 side: a pool whose queries are bounded by a timeout and fail as
 * MariaDbQueryError, and the `SELECT 1` ping that tells a server answers.
 */
import { Clock, Duration, Effect, Schedule } from "effect"
import mysql from "mysql2/promise"
import { MariaDbQueryError } from "./MariaDbErrors.js"

export type Row = Record<string, unknown>

/** Process management (and every query and ping) runs on the real clock, also inside tests using TestClock. */
const liveClock = Clock.Clock.defaultValue()
export const withLiveClock = <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.provideService(self, Clock.Clock, liveClock)

export const READY_TIMEOUT = "30 seconds"
const CONNECT_TIMEOUT_MS = 5_000

export type ConnectOptions = mysql.PoolOptions

/** One `SELECT 1` on a fresh connection. */
export const ping = (conn: ConnectOptions) =>
  Effect.tryPromise({
    try: async () => {
      const c = await mysql.createConnection({ ...conn, connectTimeout: 2_000 })
      try {
        await c.query("SELECT 1")
      } finally {
        c.destroy()
      }
    },
    catch: (cause) => cause
  })

export const pingUntil = (conn: ConnectOptions) =>
  ping(conn).pipe(Effect.retry({ schedule: Schedule.spaced("50 millis").pipe(Schedule.upTo({ duration: READY_TIMEOUT })) }))

export const makePool = (conn: ConnectOptions) =>
  Effect.acquireRelease(
    Effect.sync(() =>
      mysql.createPool({ ...conn, connectionLimit: 8, supportBigNumbers: true, connectTimeout: CONNECT_TIMEOUT_MS })
    ),
    (pool) => withLiveClock(Effect.tryPromise(() => pool.end()).pipe(Effect.timeoutOption("2 seconds"), Effect.ignore))
  )

const toQueryError = (sql: string, cause: unknown): MariaDbQueryError => {
  const e = cause as { message?: unknown; code?: unknown; errno?: unknown }
  return new MariaDbQueryError({
    sql,
    message: typeof e?.message === "string" ? e.message : String(cause),
    code: typeof e?.code === "string" ? e.code : undefined,
    errno: typeof e?.errno === "number" ? e.errno : undefined,
    cause
  })
}

/**
 * A query on its own pool connection. Interruption (the timeout) destroys the
 * connection so a dead server cannot pin the pool; the server-side statement
 * may still run to completion.
 */
export const poolQuery = (pool: mysql.Pool, timeout: Duration.Input) =>
<R extends Row = Row>(sql: string, params?: ReadonlyArray<unknown>): Effect.Effect<ReadonlyArray<R>, MariaDbQueryError> =>
  Effect.callback<ReadonlyArray<R>, MariaDbQueryError>((resume) => {
    let done = false
    let conn: mysql.PoolConnection | undefined
    pool.getConnection().then(
      (c) => {
        if (done) return c.release()
        conn = c
        c.query(sql, params === undefined ? undefined : [...params]).then(
          ([rows]) => {
            if (done) return
            done = true
            c.release()
            resume(Effect.succeed(Array.isArray(rows) ? (rows as unknown as ReadonlyArray<R>) : []))
          },
          (cause) => {
            if (done) return
            done = true
            c.release()
            resume(Effect.fail(toQueryError(sql, cause)))
          }
        )
      },
      (cause) => {
        if (done) return
        done = true
        resume(Effect.fail(toQueryError(sql, cause)))
      }
    )
    return Effect.sync(() => {
      if (done) return
      done = true
      conn?.destroy()
    })
  }).pipe(
    Effect.timeoutOrElse({
      duration: timeout,
      orElse: () =>
        Effect.fail(
          new MariaDbQueryError({
            sql,
            message: `no answer within ${Duration.format(Duration.fromInputUnsafe(timeout))}`,
            code: "TIMEOUT"
          })
        )
    }),
    withLiveClock
  )
