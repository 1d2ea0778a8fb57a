/** Helpers for tests and benchmarks against a LocalCluster whose nodes run MariaDB. */
import { Data, Effect } from "effect"
import { execFile } from "node:child_process"
import { readFileSync } from "node:fs"
import { join } from "node:path"
import mysql from "mysql2/promise"
import type { NodeStatus } from "../../src/domain/cluster/nodeStatus.js"
import * as LocalCluster from "../../src/testing/LocalCluster.js"
import { fetchStatus } from "../../src/client/StatusClient.js"

export class SqlError extends Data.TaggedError("SqlError")<{ readonly sql: string; readonly message: string }> {}

export const APP_USER = "app"
export const APP_PASSWORD = "app-secret"

type Status = NodeStatus | { readonly error: string }
const ok = (s: Status): s is NodeStatus => !("error" in s)

export const statuses = (c: LocalCluster.LocalCluster) =>
  Effect.forEach(c.nodes, (n) => fetchStatus(`${n.host}:${n.adminPort}`, 1_000, c.adminToken), { concurrency: "unbounded" })

export const statusOf = (n: LocalCluster.LocalNode) => fetchStatus(`${n.host}:${n.adminPort}`, 1_000)

/** The node whose database serves as master now (undefined: none). */
export const servingMaster = (c: LocalCluster.LocalCluster) =>
  Effect.map(statuses(c), (ss) => {
    const m = ss.filter(ok).filter((s) => s.database?.role === "master")
    return m.length === 1 ? c.nodes.find((n) => n.nodeId === m[0]!.nodeId) : undefined
  })

export const waitForMaster = (c: LocalCluster.LocalCluster, what: string, exclude?: number, timeoutMs = 30_000) =>
  Effect.gen(function*() {
    let found: LocalCluster.LocalNode | undefined
    yield* LocalCluster.waitFor(
      what,
      Effect.map(servingMaster(c), (m) => (found = m) !== undefined && m!.nodeId !== exclude),
      timeoutMs
    )
    return found!
  })

/** Every live node's database applied the whole chosen log (the master serves, replicas lag 0). */
export const waitConverged = (c: LocalCluster.LocalCluster, timeoutMs = 30_000) =>
  LocalCluster.waitFor(
    "every database to apply the whole log",
    Effect.map(statuses(c), (ss) =>
      ss.every((s) => ok(s) && (s.database?.role === "master" || (s.database?.role === "replica" && s.database.lag === 0)))),
    timeoutMs
  )

/** One statement as the OS admin over the node's own MariaDB socket (test inspection only). */
export const adminQuery = <R = Record<string, unknown>>(n: LocalCluster.LocalNode, sql: string, params?: ReadonlyArray<unknown>) =>
  Effect.tryPromise({
    try: async () => {
      const conn = await mysql.createConnection({ socketPath: n.mariadb!.socket, user: "root", supportBigNumbers: true })
      try {
        const [rows] = await conn.query(sql, params === undefined ? undefined : [...params])
        return (Array.isArray(rows) ? rows : []) as unknown as ReadonlyArray<R>
      } finally {
        conn.destroy()
      }
    },
    catch: (e) => new SqlError({ sql, message: e instanceof Error ? e.message : String(e) })
  })

/** A client connection through a proxy port, closed with the scope. */
export const connect = (
  port: number,
  options: { readonly host?: string; readonly localAddress?: string; readonly user?: string; readonly password?: string } = {}
) =>
  Effect.acquireRelease(
    Effect.tryPromise({
      try: () =>
        mysql.createConnection({
          host: options.host ?? "127.0.0.1",
          port,
          user: options.user ?? APP_USER,
          password: options.password ?? APP_PASSWORD,
          connectTimeout: 5_000,
          ...(options.localAddress !== undefined ? { localAddress: options.localAddress } : {})
        }),
      catch: (e) => new SqlError({ sql: "connect", message: e instanceof Error ? e.message : String(e) })
    }),
    (conn) => Effect.sync(() => conn.destroy())
  )

export const run = <R = Record<string, unknown>>(conn: mysql.Connection, sql: string, params?: ReadonlyArray<unknown>) =>
  Effect.tryPromise({
    try: async () => {
      const [rows] = await conn.query(sql, params === undefined ? undefined : [...params])
      return (Array.isArray(rows) ? rows : []) as unknown as ReadonlyArray<R>
    },
    catch: (e) => new SqlError({ sql, message: e instanceof Error ? e.message : String(e) })
  })

/**
 * The application user, created by a real write on the master (it replicates through the
 * log like any other transaction).
 */
export const createAppUser = (master: LocalCluster.LocalNode) =>
  Effect.gen(function*() {
    yield* adminQuery(master, `CREATE USER IF NOT EXISTS '${APP_USER}'@'%' IDENTIFIED BY '${APP_PASSWORD}'`)
    yield* adminQuery(master, `GRANT ALL ON *.* TO '${APP_USER}'@'%'`)
  })

export const mariadbPid = (n: LocalCluster.LocalNode): number => Number(readFileSync(n.mariadb!.pidFile, "utf8").trim())

export const checksum = (n: LocalCluster.LocalNode, table: string) =>
  Effect.map(adminQuery<{ Checksum: unknown }>(n, `CHECKSUM TABLE ${table}`), (r) => String(r[0]?.Checksum))

export interface Writer {
  /** Ids whose INSERT returned OK. */
  readonly acked: ReadonlyArray<number>
  /** Ids whose INSERT failed or whose answer was lost: either outcome is allowed. */
  readonly indeterminate: ReadonlyArray<number>
  /** Time of each acknowledged write (Date.now()). */
  readonly ackedAt: ReadonlyArray<number>
}

/**
 * Inserts rows (id, id) into `table` through `port` one at a time, reconnecting after
 * errors, until the scope closes. Bounded: at most `maxWrites`.
 */
export const startWriter = (port: number, table: string, maxWrites = 100_000, host = "127.0.0.1") =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const state = { acked: [] as Array<number>, indeterminate: [] as Array<number>, ackedAt: [] as Array<number>, stop: false }
      const loop = (async () => {
        let id = 0
        while (!state.stop && id < maxWrites) {
          let conn: mysql.Connection | undefined
          try {
            conn = await mysql.createConnection({ host, port, user: APP_USER, password: APP_PASSWORD, connectTimeout: 2_000 })
            while (!state.stop && id < maxWrites) {
              const k = ++id
              try {
                await conn.query(`INSERT INTO ${table} VALUES (?, ?)`, [k, k])
              } catch (e) {
                state.indeterminate.push(k)
                throw e
              }
              state.acked.push(k)
              state.ackedAt.push(Date.now())
            }
          } catch {
            // Connection refused or lost (failover): try again shortly.
            await new Promise((r) => setTimeout(r, 20))
          } finally {
            conn?.destroy()
          }
        }
      })()
      return { state, loop }
    }),
    ({ loop, state }) =>
      Effect.promise(() => {
        state.stop = true
        return loop
      })
  ).pipe(Effect.map(({ state }) => state as Writer))

/** Ids of `table` on a node. */
export const idsOn = (n: LocalCluster.LocalNode, table: string) =>
  Effect.map(adminQuery<{ id: number }>(n, `SELECT id FROM ${table}`), (rows) => new Set(rows.map((r) => Number(r.id))))

/** Waits (bounded) until every writer has `count` more writes acknowledged than when it began. */
export const writesFlowing = (writers: ReadonlyArray<Writer>, what: string, timeoutMs = 30_000, count = 20) =>
  Effect.suspend(() => {
    const from = writers.map((w) => w.acked.length)
    return LocalCluster.waitFor(what, Effect.sync(() => writers.every((w, j) => w.acked.length >= from[j]! + count)), timeoutMs)
  })

/** The writer's acknowledged ids that some of `nodes` lacks in `table`. */
export const ackedMissing = (nodes: ReadonlyArray<LocalCluster.LocalNode>, writer: Writer, table: string) =>
  Effect.map(Effect.forEach(nodes, (n) => idsOn(n, table)), (onNodes) => writer.acked.filter((id) => onNodes.some((ids) => !ids.has(id))))

/** Each node's last warnings and errors, on stderr (what a failed benchmark or run leaves to read). */
export const printNodeWarnings = (nodes: ReadonlyArray<LocalCluster.LocalNode>) =>
  Effect.sync(() => {
    for (const n of nodes) {
      process.stderr.write(`--- node ${n.nodeId}\n${n.output().split("\n").filter((l) => /WARN|ERROR/.test(l)).slice(-20).join("\n")}\n`)
    }
  })

/** `node dist/main.js ARGS` (built first): its exit code and output (stdout, then stderr). */
export const runCli = (args: ReadonlyArray<string>) =>
  Effect.callback<{ readonly code: number; readonly out: string }>((resume) => {
    execFile(process.execPath, [join(process.cwd(), "dist", "main.js"), ...args], { timeout: 90_000 }, (error, stdout, stderr) =>
      resume(Effect.succeed({ code: error === null ? 0 : typeof error.code === "number" ? error.code : 1, out: stdout + stderr })))
  })

/** A cluster with MariaDB, a master serving, the app user and `table` (`db.name`: id INT PRIMARY KEY, v INT). */
export const clusterWithTable = (options: LocalCluster.LocalClusterOptions, table: string, masterTimeoutMs?: number) =>
  Effect.gen(function*() {
    const c = yield* LocalCluster.make(options)
    const [schema, name] = table.split(".") as [string, string]
    const first = yield* waitForMaster(c, "a first master", undefined, masterTimeoutMs)
    // The setup goes in as root on the master's own socket, past the proxy and its lease
    // check. If that master loses its lease meanwhile (short leases on a loaded machine),
    // what it had not yet put in the log is a write behind the cluster's back, rebuilt away
    // with its node. So it is done again on the current master until every node has it.
    const landed = Effect.gen(function*() {
      const master = yield* waitForMaster(c, "a master for the setup", undefined, masterTimeoutMs)
      yield* createAppUser(master)
      yield* adminQuery(master, `CREATE DATABASE IF NOT EXISTS ${schema}`)
      yield* adminQuery(master, `CREATE TABLE IF NOT EXISTS ${table} (id INT PRIMARY KEY, v INT)`)
      yield* waitConverged(c, 30_000)
      const found = yield* Effect.forEach(c.nodes, (n) =>
        adminQuery<{ n: unknown }>(n,
          "SELECT (SELECT COUNT(*) FROM mysql.user WHERE User = ?) + (SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?) AS n",
          [APP_USER, schema, name]))
      return found.every((rows) => Number(rows[0]?.n) === 2)
    }).pipe(Effect.catch(() => Effect.succeed(false)))
    yield* LocalCluster.waitFor("the app user and the table on every node", landed, 180_000)
    const master = yield* waitForMaster(c, "the master after the setup", undefined, masterTimeoutMs)
    return { c, master: master.nodeId === first.nodeId ? first : master }
  })
