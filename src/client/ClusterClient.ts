/**
 * A cluster-aware MySQL client for Effect apps: statements go to the RW port (or the RO
 * port) of any live member; every member's RW port reaches the one master, so failover is
 * a matter of reconnecting. Connecting is retried across members on a schedule (an
 * election takes under a second); a statement whose connection breaks before its answer
 * is not retried: a write or COMMIT that may or may not have taken effect fails with
 * CommitIndeterminate, so the caller decides.
 */
import { Context, Data, Duration, Effect, Layer, Schedule, Scope } from "effect"
import mysql from "mysql2/promise"
import { cappedExponential } from "../services/schedules.js"

export interface ClusterClientMember {
  readonly host: string
  readonly rwPort: number
  readonly roPort?: number | undefined
}

export interface ClusterClientOptions {
  readonly members: ReadonlyArray<ClusterClientMember>
  readonly user: string
  readonly password?: string | undefined
  readonly database?: string | undefined
  /** Connections kept per member and port; default 4. */
  readonly poolSize?: number | undefined
  /** Per connection attempt; default 2 seconds. */
  readonly connectTimeout?: Duration.Input | undefined
  /** How long to keep trying members before NoServerAvailable; default 15 seconds. */
  readonly failoverTimeout?: Duration.Input | undefined
}

/** A value bound to a `?` placeholder (sent escaped by the driver, never spliced into SQL by us). */
export type SqlParam = string | number | bigint | boolean | null | Date | Uint8Array

/** Rows of a SELECT, or what a write changed. */
export interface QueryResult {
  readonly rows: ReadonlyArray<Record<string, unknown>>
  readonly affectedRows: number
  readonly insertId: number
}

/** No member's port answered within the failover timeout (no majority, or every node down). */
export class NoServerAvailable extends Data.TaggedError("NoServerAvailable")<{
  readonly port: "rw" | "ro"
  readonly tried: ReadonlyArray<string>
  readonly lastError: string
}> {
  override get message() {
    return `no ${this.port} port answered (${this.tried.join(", ")}): ${this.lastError}`
  }
}

/** The server refused the statement (SQL error): nothing to retry on another member. */
export class SqlError extends Data.TaggedError("SqlError")<{
  readonly errno: number
  readonly sqlState: string
  readonly message: string
}> {}

/**
 * The connection broke after a write or COMMIT was sent and before its answer: it may or
 * may not have committed (a failover in between). Read back to know, or make it idempotent.
 */
export class CommitIndeterminate extends Data.TaggedError("CommitIndeterminate")<{
  readonly sql: string
  readonly reason: string
}> {}

/** The connection broke inside a transaction before its COMMIT was sent: it did not commit. */
export class TransactionAborted extends Data.TaggedError("TransactionAborted")<{
  readonly reason: string
}> {}

export type ClusterClientError = NoServerAvailable | SqlError | CommitIndeterminate

export interface Transaction {
  readonly query: (sql: string, params?: ReadonlyArray<SqlParam>) => Effect.Effect<QueryResult, SqlError | TransactionAborted>
}

export interface ClusterClientShape {
  /** One autocommit statement through an RW port (linearizable). */
  readonly query: (sql: string, params?: ReadonlyArray<SqlParam>) => Effect.Effect<QueryResult, ClusterClientError>
  /** One statement through an RO port (a replica; reads may trail the master). */
  readonly read: (sql: string, params?: ReadonlyArray<SqlParam>) => Effect.Effect<QueryResult, NoServerAvailable | SqlError>
  /** BEGIN, `body`, COMMIT on one RW connection; rolled back when `body` fails. */
  readonly transaction: <A, E>(
    body: (tx: Transaction) => Effect.Effect<A, E>
  ) => Effect.Effect<A, E | ClusterClientError | TransactionAborted>
}

export class ClusterClient extends Context.Service<ClusterClient, ClusterClientShape>()("phxmaria/ClusterClient") {}

interface DriverError {
  readonly errno?: number
  readonly sqlState?: string
  readonly sqlMessage?: string
  readonly message?: string
  readonly fatal?: boolean
}

const asDriverError = (u: unknown): DriverError => (typeof u === "object" && u !== null ? u as DriverError : { message: String(u) })

/**
 * Refusals that mean "this member cannot take the statement now, another may": the proxy's
 * 1105 (SQLSTATE 08004) while no master is known, 1040 too many connections, read_only (1290) on a node
 * that just stepped down. The statement was not executed.
 */
const RETRYABLE_ERRNOS = new Set([1040, 1290])
/** The proxy's refusal at login (its 1105 carries 08004; MariaDB's own 1105 mid-query is not retried). */
const isRefusal = (e: SqlError) => RETRYABLE_ERRNOS.has(e.errno) || (e.errno === 1105 && e.sqlState === "08004")

const toResult = (raw: unknown): QueryResult => {
  if (Array.isArray(raw)) return { rows: raw as ReadonlyArray<Record<string, unknown>>, affectedRows: 0, insertId: 0 }
  const header = raw as { readonly affectedRows?: number; readonly insertId?: number }
  return { rows: [], affectedRows: header.affectedRows ?? 0, insertId: header.insertId ?? 0 }
}

const sqlErrorOf = (e: DriverError) =>
  new SqlError({ errno: e.errno ?? 0, sqlState: e.sqlState ?? "HY000", message: e.sqlMessage ?? e.message ?? "unknown error" })

export const make = Effect.fnUntraced(function*(options: ClusterClientOptions) {
  // A client with nowhere to connect is a programming error, not a runtime condition.
  if (options.members.length === 0) return yield* Effect.die(new Error("ClusterClient needs at least one member"))
  const connectTimeoutMs = Duration.toMillis(Duration.fromInputUnsafe(options.connectTimeout ?? "2 seconds"))
  const failoverTimeout = options.failoverTimeout ?? "15 seconds"
  const pools = new Map<string, mysql.Pool>()
  yield* Effect.addFinalizer(() => Effect.promise(() => Promise.all([...pools.values()].map((p) => p.end().catch(() => undefined)))))

  const poolFor = (host: string, port: number): mysql.Pool => {
    const key = `${host}:${port}`
    let pool = pools.get(key)
    if (pool === undefined) {
      pool = mysql.createPool({
        host,
        port,
        user: options.user,
        ...(options.password !== undefined ? { password: options.password } : {}),
        ...(options.database !== undefined ? { database: options.database } : {}),
        connectionLimit: options.poolSize ?? 4,
        connectTimeout: connectTimeoutMs,
        supportBigNumbers: true
      })
      pools.set(key, pool)
    }
    return pool
  }

  /** Where to try first: the member that answered last (round-robin on failure). */
  const preferred = { rw: 0, ro: 0 }

  /**
   * A connection on a member's `port` that has answered a ping, trying members in turn until
   * one does or the failover timeout passes.
   */
  const acquire = (port: "rw" | "ro"): Effect.Effect<mysql.PoolConnection, NoServerAvailable, Scope.Scope> => {
    const targets = options.members.flatMap((m) => {
      const p = port === "rw" ? m.rwPort : m.roPort
      return p === undefined ? [] : [{ host: m.host, port: p }]
    })
    let lastError = port === "ro" ? "no member has an RO port" : "not tried"
    const tried = new Set<string>()
    const once = Effect.suspend(() => {
      if (targets.length === 0) return Effect.fail(lastError)
      const index = preferred[port] % targets.length
      const target = targets[index]!
      tried.add(`${target.host}:${target.port}`)
      return Effect.acquireRelease(
        Effect.tryPromise({
          try: async () => {
            const conn = await poolFor(target.host, target.port).getConnection()
            try {
              await conn.ping()
              return conn
            } catch (e) {
              conn.destroy()
              throw e
            }
          },
          catch: (e) => {
            const d = asDriverError(e)
            lastError = d.sqlMessage ?? d.message ?? String(e)
            preferred[port] = index + 1
            return lastError
          }
        }),
        (conn) => Effect.sync(() => conn.release())
      )
    })
    return once.pipe(
      Effect.retry(cappedExponential("50 millis", "500 millis")),
      Effect.timeoutOrElse({
        duration: failoverTimeout,
        orElse: () => Effect.fail(lastError)
      }),
      Effect.mapError(() => new NoServerAvailable({ port, tried: [...tried], lastError }))
    )
  }

  /** Runs one statement; a broken connection is `lost`, an SQL error is SqlError. */
  const run = <L>(conn: mysql.PoolConnection, sql: string, params: ReadonlyArray<SqlParam> | undefined, lost: (reason: string) => L) =>
    Effect.tryPromise({
      try: () => conn.query(sql, params as Array<unknown> | undefined).then(([raw]) => toResult(raw)),
      catch: (e): SqlError | L => {
        const d = asDriverError(e)
        if (d.fatal === true || d.errno === undefined) {
          conn.destroy()
          return lost(d.message ?? String(e))
        }
        return sqlErrorOf(d)
      }
    })

  /** Statements that were refused without executing are retried on a fresh connection. */
  const retryRefused = <A, E>(self: Effect.Effect<A, E | SqlError>) =>
    self.pipe(Effect.retry({
      while: (e) => e instanceof SqlError && isRefusal(e),
      schedule: Schedule.spaced("100 millis"),
      times: 50
    }))

  const query = (sql: string, params?: ReadonlyArray<SqlParam>) =>
    retryRefused(Effect.scoped(Effect.flatMap(acquire("rw"), (conn) =>
      run(conn, sql, params, (reason) => new CommitIndeterminate({ sql: sql.slice(0, 200), reason })))))

  const read = (sql: string, params?: ReadonlyArray<SqlParam>) =>
    retryRefused(Effect.scoped(Effect.flatMap(acquire("ro"), (conn) =>
      // A read that lost its connection changed nothing: it is run again elsewhere.
      run(conn, sql, params, (reason) => new NoServerAvailable({ port: "ro", tried: [], lastError: reason })).pipe(
        Effect.retry({ while: (e) => e._tag === "NoServerAvailable", times: 3 })
      ))))

  const transaction = <A, E>(body: (tx: Transaction) => Effect.Effect<A, E>) =>
    Effect.scoped(Effect.gen(function*() {
      const conn = yield* acquire("rw")
      const aborted = (reason: string) => new TransactionAborted({ reason })
      yield* run(conn, "BEGIN", undefined, aborted)
      const tx: Transaction = { query: (sql, params) => run(conn, sql, params, aborted) }
      const result = yield* body(tx).pipe(
        Effect.onError(() => run(conn, "ROLLBACK", undefined, aborted).pipe(Effect.ignore))
      )
      yield* run(conn, "COMMIT", undefined, (reason) => new CommitIndeterminate({ sql: "COMMIT", reason }))
      return result
    }))

  return ClusterClient.of({ query, read, transaction })
})

export const layer = (options: ClusterClientOptions): Layer.Layer<ClusterClient> => Layer.effect(ClusterClient, make(options))
