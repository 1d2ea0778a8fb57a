/**
 * A throw-away mariadbd for tests: its own temp dir, config, port and
 * process, all owned by a Scope.
 *
 * ```ts
 * it.effect("works", () =>
 *   Effect.gen(function*() {
 *     const db = yield* MariaDbInstance.make({ serverId: 1 })
 *     const rows = yield* db.query("SELECT @@server_id AS id")
 *   }))
 * ```
 *
 * Closing the scope (success, failure or interruption) SIGKILLs the server,
 * waits for it to exit and removes its directory. A process 'exit' hook kills
 * whatever is still running if the test process ends without closing scopes.
 * Never touches the system MariaDB service or /var/lib/mysql.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { Clock, Data, Effect, Schedule } from "effect"
import * as Scope from "effect/Scope"
import mysql from "mysql2/promise"

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

export class MariaDbStartError extends Data.TaggedError("MariaDbStartError")<{
  readonly stage: "binaries" | "tempdir" | "config" | "install" | "port" | "spawn" | "exited" | "timeout"
  readonly message: string
  readonly dir?: string | undefined
  /** Last part of the error log (and install output for stage "install"). */
  readonly logTail?: string | undefined
  /** True when the server exited because its TCP port was taken. */
  readonly portInUse?: boolean | undefined
  readonly cause?: unknown
}> {}

export class MariaDbQueryError extends Data.TaggedError("MariaDbQueryError")<{
  readonly sql: string
  readonly message: string
  readonly code?: string | undefined
  readonly errno?: number | undefined
  readonly cause?: unknown
}> {}

// ---------------------------------------------------------------------------
// API
// ---------------------------------------------------------------------------

export interface MariaDbInstanceOptions {
  /** server_id; defaults to a per-process counter starting at 1. */
  readonly serverId?: number | undefined
  /**
   * Extra `[mariadbd]` lines, written after the defaults (later lines win).
   * `true` writes a bare flag (e.g. `{ "skip-log-bin": true }`), `false` omits it.
   */
  readonly extraConfig?: Readonly<Record<string, string | number | boolean>> | undefined
}

export type Row = Record<string, unknown>

export interface MariaDbInstanceInfo {
  readonly host: "127.0.0.1"
  readonly port: number
  /** Unix socket path. */
  readonly socket: string
  /** The temp directory holding everything; removed on release. */
  readonly dir: string
  /** The server's datadir (`dir/data`). */
  readonly dataDir: string
  /** `dir/my.cnf` */
  readonly configFile: string
  /** `dir/error.log` */
  readonly errorLog: string
  /** log_bin basename (`dir/bin`). */
  readonly binlogBase: string
  readonly serverId: number
  readonly pid: number
  /** The OS-authenticated admin user the pool logs in as (root when running as root). */
  readonly user: string
  /**
   * Runs one statement on a pooled connection over the unix socket (root,
   * all privileges). Resolves with the rows of a result set, or `[]` for
   * statements without one. BIGINTs beyond 2^53 come back as strings.
   * Pool connections are interchangeable: for session settings use
   * `SET STATEMENT var=value FOR <statement>` rather than a separate SET.
   */
  readonly query: <R extends Row = Row>(
    sql: string,
    params?: ReadonlyArray<unknown>
  ) => Effect.Effect<ReadonlyArray<R>, MariaDbQueryError>
  /** Reads the last `bytes` of the error log (for diagnostics). */
  readonly errorLogTail: (bytes?: number) => Effect.Effect<string>
  /** SIGKILLs the server (a crash: no clean shutdown) and waits until it has exited. */
  readonly kill: Effect.Effect<void>
  /** Starts the server again on the same datadir and port (after `kill`); waits until it answers. */
  readonly start: Effect.Effect<void, MariaDbStartError>
}

// ---------------------------------------------------------------------------
// Safety net: kill children still running when the process exits
// ---------------------------------------------------------------------------

const liveChildren = new Set<ChildProcess>()
const liveDirs = new Set<string>()
let exitHookInstalled = false

const installExitHook = () => {
  if (exitHookInstalled) return
  exitHookInstalled = true
  process.on("exit", () => {
    for (const child of liveChildren) {
      try {
        child.kill("SIGKILL")
      } catch {
        // already gone
      }
    }
    for (const dir of liveDirs) {
      try {
        fs.rmSync(dir, { recursive: true, force: true })
      } catch {
        // best effort
      }
    }
  })
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/** Schedules and timeouts here always use the real clock, also under `it.effect`'s TestClock. */
const liveClock = Clock.Clock.defaultValue()
const withLiveClock = <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.provideService(self, Clock.Clock, liveClock)

const READY_TIMEOUT = "30 seconds"
const EXIT_TIMEOUT = "10 seconds"
const PORT_ATTEMPTS = 5

let nextServerId = 1

const isRoot = () => process.getuid?.() === 0

const binaryDirs = () => [
  ...(process.env.PATH ?? "").split(path.delimiter).filter((d) => d.length > 0),
  "/usr/sbin",
  "/usr/bin",
  "/usr/local/sbin",
  "/usr/local/bin"
]

const findBinary = (name: string): Effect.Effect<string, MariaDbStartError> =>
  Effect.suspend(() => {
    for (const dir of binaryDirs()) {
      const candidate = path.join(dir, name)
      try {
        fs.accessSync(candidate, fs.constants.X_OK)
        return Effect.succeed(candidate)
      } catch {
        // try the next directory
      }
    }
    return Effect.fail(
      new MariaDbStartError({
        stage: "binaries",
        message: `${name} not found on PATH, /usr/sbin or /usr/bin (run scripts/setup.sh)`
      })
    )
  })

const readTail = (file: string, bytes = 4000): string => {
  try {
    const fd = fs.openSync(file, "r")
    try {
      const size = fs.fstatSync(fd).size
      const start = Math.max(0, size - bytes)
      const buf = Buffer.alloc(size - start)
      fs.readSync(fd, buf, 0, buf.length, start)
      return buf.toString("utf8")
    } finally {
      fs.closeSync(fd)
    }
  } catch {
    return ""
  }
}

const readFrom = (file: string, offset: number): string => {
  try {
    return fs.readFileSync(file).subarray(offset).toString("utf8")
  } catch {
    return ""
  }
}

const fileSize = (file: string): number => {
  try {
    return fs.statSync(file).size
  } catch {
    return 0
  }
}

interface Layout {
  readonly dir: string
  readonly dataDir: string
  readonly configFile: string
  readonly socket: string
  readonly pidFile: string
  readonly errorLog: string
  readonly binlogBase: string
  readonly relayLog: string
  readonly tmpDir: string
}

const layoutOf = (dir: string): Layout => ({
  dir,
  dataDir: path.join(dir, "data"),
  configFile: path.join(dir, "my.cnf"),
  socket: path.join(dir, "mysqld.sock"),
  pidFile: path.join(dir, "mysqld.pid"),
  errorLog: path.join(dir, "error.log"),
  binlogBase: path.join(dir, "bin"),
  relayLog: path.join(dir, "relay"),
  tmpDir: path.join(dir, "tmp")
})

const renderConfig = (
  l: Layout,
  port: number,
  serverId: number,
  extra: Readonly<Record<string, string | number | boolean>>
): string => {
  const lines: Array<string> = ["[mariadbd]"]
  if (isRoot()) lines.push("user=root")
  lines.push(
    `datadir=${l.dataDir}`,
    `socket=${l.socket}`,
    `pid-file=${l.pidFile}`,
    // own temp dir: bootstraps sharing /tmp have lost each other's temp tables
    `tmpdir=${l.tmpDir}`,
    `port=${port}`,
    "bind-address=127.0.0.1",
    `log-error=${l.errorLog}`,
    "skip-name-resolve",
    `server_id=${serverId}`,
    `log_bin=${l.binlogBase}`,
    "binlog_format=ROW",
    "gtid_strict_mode=ON",
    "log_slave_updates=ON",
    "sync_binlog=1",
    "innodb_flush_log_at_trx_commit=1",
    `relay_log=${l.relayLog}`,
    "skip-slave-start",
    "max_binlog_size=64M",
    // small footprint: several instances on a 2-core test machine
    "innodb_buffer_pool_size=32M",
    "innodb_log_file_size=16M",
    "innodb_log_buffer_size=4M",
    "key_buffer_size=1M",
    "aria_pagecache_buffer_size=4M",
    "performance_schema=OFF",
    "max_connections=200"
  )
  for (const [key, value] of Object.entries(extra)) {
    if (value === true) lines.push(key)
    else if (value !== false) lines.push(`${key}=${value}`)
  }
  return lines.join("\n") + "\n"
}

const writeConfig = (l: Layout, port: number, serverId: number, extra: Readonly<Record<string, string | number | boolean>>) =>
  Effect.try({
    try: () => fs.writeFileSync(l.configFile, renderConfig(l, port, serverId, extra)),
    catch: (cause) =>
      new MariaDbStartError({ stage: "config", message: `cannot write ${l.configFile}: ${String(cause)}`, dir: l.dir, cause })
  })

/** A loopback port that was free a moment ago (bind 0, read, close). */
const freePort: Effect.Effect<number, MariaDbStartError> = Effect.callback<number, MariaDbStartError>((resume) => {
  const server = net.createServer()
  server.unref()
  server.once("error", (cause) =>
    resume(Effect.fail(new MariaDbStartError({ stage: "port", message: `cannot pick a port: ${cause.message}`, cause })))
  )
  server.listen(0, "127.0.0.1", () => {
    const port = (server.address() as net.AddressInfo).port
    server.close(() => resume(Effect.succeed(port)))
  })
})

const makeTempDir = Effect.acquireRelease(
  Effect.tryPromise({
    try: () => fs.promises.mkdtemp(path.join(os.tmpdir(), "phxmaria-mariadb-")),
    catch: (cause) => new MariaDbStartError({ stage: "tempdir", message: `mkdtemp failed: ${String(cause)}`, cause })
  }).pipe(Effect.tap((dir) => Effect.sync(() => liveDirs.add(dir)))),
  (dir) =>
    Effect.promise(() => fs.promises.rm(dir, { recursive: true, force: true, maxRetries: 3 }).catch(() => undefined)).pipe(
      Effect.tap(() => Effect.sync(() => liveDirs.delete(dir)))
    )
)

const installDb = (installDbBin: string, l: Layout) =>
  Effect.callback<void, MariaDbStartError>((resume) => {
    const child = execFile(
      installDbBin,
      [`--defaults-file=${l.configFile}`, "--skip-test-db"],
      { timeout: 120_000, maxBuffer: 8 * 1024 * 1024 },
      (error, stdout, stderr) => {
        if (error === null) return resume(Effect.void)
        const output = `${stdout}\n${stderr}`.slice(-3000)
        resume(
          Effect.fail(
            new MariaDbStartError({
              stage: "install",
              message: `mariadb-install-db failed (${error.code ?? error.signal ?? error.message})`,
              dir: l.dir,
              logTail: `${output}\n--- ${l.errorLog} ---\n${readTail(l.errorLog, 2000)}`,
              cause: error
            })
          )
        )
      }
    )
    return Effect.sync(() => {
      if (child.exitCode === null) child.kill("SIGKILL")
    })
  })

interface Server {
  readonly child: ChildProcess
  readonly pid: number
  /** Resolves once the process has exited (and been reaped) or failed to spawn. */
  readonly exited: Promise<{ readonly code: number | null; readonly signal: string | null; readonly error?: Error }>
}

const spawnServer = (mariadbd: string, l: Layout): Effect.Effect<Server, MariaDbStartError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.suspend(() => {
      installExitHook()
      const child = spawn(mariadbd, [`--defaults-file=${l.configFile}`], { stdio: "ignore" })
      const exited = new Promise<{ code: number | null; signal: string | null; error?: Error }>((resolve) => {
        child.once("exit", (code, signal) => resolve({ code, signal }))
        child.once("error", (error) => resolve({ code: null, signal: null, error }))
      })
      void exited.then(() => liveChildren.delete(child))
      if (child.pid === undefined) {
        return Effect.promise(() => exited).pipe(
          Effect.flatMap((r) =>
            Effect.fail(
              new MariaDbStartError({
                stage: "spawn",
                message: `cannot spawn ${mariadbd}: ${r.error?.message ?? "no pid"}`,
                dir: l.dir,
                cause: r.error
              })
            )
          )
        )
      }
      liveChildren.add(child)
      return Effect.succeed<Server>({ child, pid: child.pid, exited })
    }),
    (server) => withLiveClock(killServer(server))
  )

const killServer = (server: Server): Effect.Effect<void> =>
  Effect.gen(function*() {
    if (server.child.exitCode === null && server.child.signalCode === null) {
      try {
        server.child.kill("SIGKILL")
      } catch {
        // already gone
      }
    }
    const exited = yield* Effect.promise(() => server.exited).pipe(Effect.timeoutOption(EXIT_TIMEOUT))
    if (exited._tag === "None") {
      yield* Effect.logWarning(`mariadbd pid ${server.pid} did not exit within ${EXIT_TIMEOUT} of SIGKILL`)
    }
  })

/** One `SELECT 1` on a fresh connection. */
const ping = (socket: string, user: string) =>
  Effect.tryPromise({
    try: async () => {
      const conn = await mysql.createConnection({ socketPath: socket, user, connectTimeout: 2_000 })
      try {
        await conn.query("SELECT 1")
      } finally {
        conn.destroy()
      }
    },
    catch: (cause) => cause
  })

/** Waits until the server answers, failing early if the process exits. */
const waitReady = (server: Server, l: Layout, user: string, logOffset: number): Effect.Effect<void, MariaDbStartError> => {
  const answers = ping(l.socket, user).pipe(
    Effect.retry({ schedule: Schedule.spaced("50 millis").pipe(Schedule.upTo({ duration: READY_TIMEOUT })) }),
    Effect.mapError(
      (cause) =>
        new MariaDbStartError({
          stage: "timeout",
          message: `mariadbd pid ${server.pid} did not answer SELECT 1 within ${READY_TIMEOUT}`,
          dir: l.dir,
          logTail: readTail(l.errorLog),
          cause
        })
    )
  )
  const exits = Effect.promise(() => server.exited).pipe(
    Effect.flatMap((r) => {
      const log = readFrom(l.errorLog, logOffset)
      return Effect.fail(
        new MariaDbStartError({
          stage: "exited",
          message: `mariadbd pid ${server.pid} exited during startup (code ${r.code}, signal ${r.signal})`,
          dir: l.dir,
          logTail: readTail(l.errorLog),
          portInUse: /Address already in use|Bind on TCP\/IP port/i.test(log)
        })
      )
    })
  )
  return Effect.raceFirst(answers, exits)
}

const makePool = (l: Layout, user: string) =>
  Effect.acquireRelease(
    Effect.sync(() =>
      mysql.createPool({
        socketPath: l.socket,
        user,
        connectionLimit: 8,
        supportBigNumbers: true,
        connectTimeout: 5_000
      })
    ),
    (pool) =>
      withLiveClock(
        Effect.tryPromise(() => pool.end()).pipe(Effect.timeoutOption("2 seconds"), Effect.ignore)
      )
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

// ---------------------------------------------------------------------------
// make
// ---------------------------------------------------------------------------

const make = (options: MariaDbInstanceOptions = {}): Effect.Effect<MariaDbInstanceInfo, MariaDbStartError, Scope.Scope> =>
  withLiveClock(
    Effect.gen(function*() {
      const mariadbd = yield* findBinary("mariadbd")
      const installDbBin = yield* findBinary("mariadb-install-db")
      const serverId = options.serverId ?? nextServerId++
      const extra = options.extraConfig ?? {}
      const user = isRoot() ? "root" : os.userInfo().username

      const dir = yield* makeTempDir
      const l = layoutOf(dir)
      yield* Effect.try({
        try: () => fs.mkdirSync(l.tmpDir),
        catch: (cause) => new MariaDbStartError({ stage: "tempdir", message: `mkdir ${l.tmpDir} failed: ${String(cause)}`, dir, cause })
      })

      yield* writeConfig(l, yield* freePort, serverId, extra)
      yield* installDb(installDbBin, l)

      // Pick a port, start, wait; if another process grabbed the port in between, pick again.
      const start = Effect.gen(function*() {
        const port = yield* freePort
        yield* writeConfig(l, port, serverId, extra)
        const logOffset = fileSize(l.errorLog)
        const server = yield* spawnServer(mariadbd, l)
        yield* waitReady(server, l, user, logOffset)
        return { port, server }
      })
      const { port, server } = yield* start.pipe(
        Effect.retry({ times: PORT_ATTEMPTS - 1, while: (e) => e.portInUse === true })
      )

      const pool = yield* makePool(l, user)
      const scope = yield* Effect.scope
      let current = server

      const info: MariaDbInstanceInfo = {
        host: "127.0.0.1",
        port,
        socket: l.socket,
        dir: l.dir,
        dataDir: l.dataDir,
        configFile: l.configFile,
        errorLog: l.errorLog,
        binlogBase: l.binlogBase,
        serverId,
        get pid() {
          return current.pid
        },
        user,
        query: <R extends Row = Row>(sql: string, params?: ReadonlyArray<unknown>) =>
          Effect.tryPromise({
            try: () => pool.query(sql, params === undefined ? undefined : [...params]),
            catch: (cause) => toQueryError(sql, cause)
          }).pipe(Effect.map(([rows]) => (Array.isArray(rows) ? (rows as unknown as ReadonlyArray<R>) : []))),
        errorLogTail: (bytes) => Effect.sync(() => readTail(l.errorLog, bytes)),
        kill: withLiveClock(Effect.suspend(() => killServer(current))),
        start: withLiveClock(Effect.gen(function*() {
          const logOffset = fileSize(l.errorLog)
          // Released with the instance's scope, like the first process.
          const next = yield* spawnServer(mariadbd, l).pipe(Scope.provide(scope))
          current = next
          yield* waitReady(next, l, user, logOffset)
        }))
      }
      return info
    })
  )

export const MariaDbInstance = {
  /**
   * Starts a fresh mariadbd in a temp dir; the surrounding Scope stops it
   * (SIGKILL, bounded wait for exit) and removes the dir.
   */
  make
} as const
