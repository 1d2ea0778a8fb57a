/**
 * This node's MariaDB, behind one shape whether the agent runs mariadbd itself
 * (`makeManaged`: a persistent dir, optionally supervised) or the operator
 * does (`attach`). Everything the agent does to its server (queries, fencing
 * by crash, restarts) goes through here.
 *
 * Crash semantics matter: fencing relies on a killed server never committing
 * transactions that still wait for the semi-sync ACK, so the default stop is
 * SIGKILL, never a clean shutdown.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { Clock, Context, Data, Duration, Effect, Exit, Layer, Option, Schedule, Semaphore } from "effect"
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
  /** True when the server exited because its TCP port was taken: callers that picked the port may pick another. */
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

/** kill/start/restart on a server the operator runs: not ours to touch. */
export class MariaDbNotManaged extends Data.TaggedError("MariaDbNotManaged")<{
  readonly operation: "kill" | "start" | "restart"
}> {
  override get message() {
    return `cannot ${this.operation} an attached MariaDB server: it is managed by the operator`
  }
}

// ---------------------------------------------------------------------------
// API
// ---------------------------------------------------------------------------

export type Row = Record<string, unknown>

export type ExtraConfig = Readonly<Record<string, string | number | boolean>>

export interface MariaDbServerShape {
  readonly host: "127.0.0.1" | string
  readonly port: number
  /** Unix socket path (undefined for an attached server reached over TCP). */
  readonly socket: string | undefined
  /** The rest are undefined for an attached server: its files are not ours. */
  readonly dir: string | undefined
  readonly dataDir: string | undefined
  readonly configFile: string | undefined
  readonly errorLog: string | undefined
  /** log_bin basename. */
  readonly binlogBase: string | undefined
  readonly serverId: number
  /** The user the pool logs in as (managed: the OS user over the socket, root when running as root). */
  readonly user: string
  /**
   * One statement on a pooled connection; `[]` for statements without a
   * result set. BIGINTs beyond 2^53 come back as strings. Fails (never hangs)
   * when the server is gone. Pool connections are interchangeable: use
   * `SET STATEMENT var=value FOR <statement>` rather than a separate SET.
   */
  readonly query: <R extends Row = Row>(
    sql: string,
    params?: ReadonlyArray<unknown>
  ) => Effect.Effect<ReadonlyArray<R>, MariaDbQueryError>
  /** The last `bytes` of the error log, for diagnostics ("" when attached). */
  readonly errorLogTail: (bytes?: number) => Effect.Effect<string>
  /** The most recent mariadbd process (it may have exited: see `up`); null when attached. */
  readonly pid: Effect.Effect<number | null>
  /** SIGKILL (a crash, no clean shutdown) and wait until it has exited. */
  readonly kill: Effect.Effect<void, MariaDbNotManaged>
  /** Start again on the same datadir and port if not running; wait until it answers. */
  readonly start: Effect.Effect<void, MariaDbStartError | MariaDbNotManaged>
  readonly restart: Effect.Effect<void, MariaDbStartError | MariaDbNotManaged>
  /** Bumped each time a newly started process answers: a change means the server restarted. */
  readonly generation: Effect.Effect<number>
  /** The process is running and answered after its start. */
  readonly up: Effect.Effect<boolean>
  /** Completes when the current process exits (never for an attached server). */
  readonly exited: Effect.Effect<void>
}

/** A managed server: its files are known. */
export interface ManagedMariaDbServer extends MariaDbServerShape {
  readonly host: "127.0.0.1"
  readonly socket: string
  readonly dir: string
  readonly dataDir: string
  readonly configFile: string
  readonly errorLog: string
  readonly binlogBase: string
}

export class MariaDbServer extends Context.Service<MariaDbServer, MariaDbServerShape>()("phxmaria/MariaDbServer") {}

export interface ManagedOptions {
  /** Persistent; created if missing. Holds data/, my.cnf, mysqld.sock, mysqld.pid, error.log, bin*, relay*, tmp/. */
  readonly dir: string
  readonly port: number
  readonly serverId: number
  /**
   * Extra `[mariadbd]` lines after the defaults (later lines win). `true`
   * writes a bare flag, `false` omits the key.
   */
  readonly extraConfig?: ExtraConfig | undefined
  /** Restart mariadbd whenever it exits, except when the scope closes. */
  readonly supervise?: boolean | undefined
  /** Retry policy for supervised restarts; default exponential from 200 ms, capped at 2 s, jittered, forever. */
  readonly restartSchedule?: Schedule.Schedule<unknown, MariaDbStartError> | undefined
  /** How closing the scope stops mariadbd. SIGTERM gets `stopTimeout` before SIGKILL. Default SIGKILL. */
  readonly stopSignal?: "SIGKILL" | "SIGTERM" | undefined
  /** Default 30 seconds. */
  readonly stopTimeout?: Duration.Input | undefined
  /** Per-query bound; default 10 seconds. */
  readonly queryTimeout?: Duration.Input | undefined
}

export interface AttachOptions {
  readonly host: string
  readonly port: number
  /** When given, the pool connects over this socket instead of host:port. */
  readonly socket?: string | undefined
  readonly user: string
  readonly password?: string | undefined
  /** Per-query bound; default 10 seconds. */
  readonly queryTimeout?: Duration.Input | undefined
}

// ---------------------------------------------------------------------------
// Safety net: kill children still running when the process exits
// ---------------------------------------------------------------------------

const liveChildren = new Set<ChildProcess>()
let exitHookInstalled = false

/**
 * For a program that owns its process (the CLI): SIGKILLs the mariadbd children still
 * running when the process exits without running finalizers. Installs one process-wide
 * hook, so the library never calls it itself.
 */
export const killChildrenOnExit = (): void => {
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
  })
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/** Process management runs on the real clock, also inside tests using TestClock. */
const liveClock = Clock.Clock.defaultValue()
const withLiveClock = <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.provideService(self, Clock.Clock, liveClock)

const READY_TIMEOUT = "30 seconds"
const EXIT_TIMEOUT = "10 seconds"
const DEFAULT_STOP_TIMEOUT: Duration.Input = "30 seconds"
const DEFAULT_QUERY_TIMEOUT: Duration.Input = "10 seconds"
const CONNECT_TIMEOUT_MS = 5_000

const defaultRestartSchedule: Schedule.Schedule<unknown, MariaDbStartError> = Schedule.min([
  Schedule.exponential("200 millis"),
  Schedule.spaced("2 seconds")
]).pipe(Schedule.jittered)

const isRoot = () => process.getuid?.() === 0

/** The OS user: mariadb-install-db gives it unix_socket login with all privileges. */
const adminUser = () => (isRoot() ? "root" : os.userInfo().username)

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

const renderConfig = (l: Layout, port: number, serverId: number, extra: ExtraConfig): string => {
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
    // a GTID reconnect scans the binlog file from its start
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

const prepareDir = (l: Layout) =>
  Effect.try({
    try: () => fs.mkdirSync(l.tmpDir, { recursive: true }),
    catch: (cause) =>
      new MariaDbStartError({ stage: "tempdir", message: `mkdir ${l.tmpDir} failed: ${String(cause)}`, dir: l.dir, cause })
  })

const writeConfig = (l: Layout, port: number, serverId: number, extra: ExtraConfig) =>
  Effect.try({
    try: () => fs.writeFileSync(l.configFile, renderConfig(l, port, serverId, extra)),
    catch: (cause) =>
      new MariaDbStartError({ stage: "config", message: `cannot write ${l.configFile}: ${String(cause)}`, dir: l.dir, cause })
  })

const isEmptyOrMissing = (dir: string): boolean => {
  try {
    return fs.readdirSync(dir).length === 0
  } catch {
    return true
  }
}

const runInstallDb = (installDbBin: string, l: Layout) =>
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

/**
 * First start only (no `data/mysql` yet). A failed install into a fresh
 * datadir is wiped, so the next start installs again instead of finding a
 * half-made `data/mysql`.
 */
const installIfNeeded = (installDbBin: string, l: Layout) =>
  Effect.suspend(() => {
    if (fs.existsSync(path.join(l.dataDir, "mysql"))) return Effect.void
    const fresh = isEmptyOrMissing(l.dataDir)
    return runInstallDb(installDbBin, l).pipe(
      Effect.onError(() =>
        Effect.sync(() => {
          if (fresh) fs.rmSync(l.dataDir, { recursive: true, force: true })
        })
      )
    )
  })

interface ExitInfo {
  readonly code: number | null
  readonly signal: string | null
  readonly error?: Error | undefined
}

interface Proc {
  readonly child: ChildProcess
  readonly pid: number
  /** Resolves once the process has exited (and been reaped). */
  readonly exited: Promise<ExitInfo>
  exit: ExitInfo | undefined
  answered: boolean
}

const describeExit = (e: ExitInfo) => (e.error !== undefined ? e.error.message : `code ${e.code}, signal ${e.signal}`)

/** Spawns mariadbd and hands the process to `register` in the same synchronous step, so none escapes. */
const spawnProc = (mariadbd: string, l: Layout, register: (proc: Proc) => void): Effect.Effect<Proc, MariaDbStartError> =>
  Effect.suspend(() => {
    const child = spawn(mariadbd, [`--defaults-file=${l.configFile}`], { stdio: "ignore" })
    let proc: Proc | undefined
    let settle!: (e: ExitInfo) => void
    const exited = new Promise<ExitInfo>((resolve) => (settle = resolve))
    const onExit = (e: ExitInfo) => {
      if (proc !== undefined) proc.exit = e
      liveChildren.delete(child)
      settle(e)
    }
    child.once("exit", (code, signal) => onExit({ code, signal }))
    child.once("error", (error) => onExit({ code: null, signal: null, error }))
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
    proc = { child, pid: child.pid, exited, exit: undefined, answered: false }
    register(proc)
    return Effect.succeed(proc)
  })

const awaitExit = (proc: Proc): Effect.Effect<ExitInfo> => Effect.promise(() => proc.exited)

const signal = (proc: Proc, sig: NodeJS.Signals) => {
  if (proc.exit !== undefined) return
  try {
    proc.child.kill(sig)
  } catch {
    // already gone
  }
}

const stopProc = (proc: Proc, how: "SIGKILL" | "SIGTERM", grace: Duration.Input): Effect.Effect<void> =>
  Effect.gen(function*() {
    if (proc.exit !== undefined) return
    if (how === "SIGTERM") {
      signal(proc, "SIGTERM")
      if (Option.isSome(yield* awaitExit(proc).pipe(Effect.timeoutOption(grace)))) return
      yield* Effect.logWarning(`mariadbd pid ${proc.pid} did not stop within ${Duration.format(Duration.fromInputUnsafe(grace))} of SIGTERM; sending SIGKILL`)
    }
    signal(proc, "SIGKILL")
    if (Option.isNone(yield* awaitExit(proc).pipe(Effect.timeoutOption(EXIT_TIMEOUT)))) {
      yield* Effect.logWarning(`mariadbd pid ${proc.pid} did not exit within ${EXIT_TIMEOUT} of SIGKILL`)
    }
  })

type ConnectOptions = mysql.PoolOptions

/** One `SELECT 1` on a fresh connection. */
const ping = (conn: ConnectOptions) =>
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

const pingUntil = (conn: ConnectOptions) =>
  ping(conn).pipe(Effect.retry({ schedule: Schedule.spaced("50 millis").pipe(Schedule.upTo({ duration: READY_TIMEOUT })) }))

/** Waits until the server answers, failing early if the process exits. */
const waitReady = (proc: Proc, l: Layout, user: string, logOffset: number): Effect.Effect<void, MariaDbStartError> => {
  const answers = pingUntil({ socketPath: l.socket, user }).pipe(
    Effect.mapError(
      (cause) =>
        new MariaDbStartError({
          stage: "timeout",
          message: `mariadbd pid ${proc.pid} did not answer SELECT 1 within ${READY_TIMEOUT}`,
          dir: l.dir,
          logTail: readTail(l.errorLog),
          cause
        })
    )
  )
  const exits = awaitExit(proc).pipe(
    Effect.flatMap((r) => {
      const log = readFrom(l.errorLog, logOffset)
      return Effect.fail(
        new MariaDbStartError({
          stage: "exited",
          message: `mariadbd pid ${proc.pid} exited during startup (${describeExit(r)})`,
          dir: l.dir,
          logTail: readTail(l.errorLog),
          portInUse: /Address already in use|Bind on TCP\/IP port/i.test(log)
        })
      )
    })
  )
  return Effect.raceFirst(answers, exits)
}

const makePool = (conn: ConnectOptions) =>
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
const poolQuery = (pool: mysql.Pool, timeout: Duration.Input) =>
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

// ---------------------------------------------------------------------------
// makeManaged
// ---------------------------------------------------------------------------

/**
 * SIGKILLs every mariadbd running on `configFile` and waits until they are gone: one left
 * by an agent that was SIGKILLed (even before it wrote its pid file). Only processes whose
 * command line names `configFile`, so nothing else is touched. Killing, not adopting: its
 * un-ACKed commits must be truncated by a crash restart.
 */
export const killStaleServer = (configFile: string): Effect.Effect<void> =>
  Effect.gen(function*() {
    const stale: Array<number> = []
    let entries: Array<string> = []
    try {
      entries = fs.readdirSync("/proc").filter((e) => /^\d+$/.test(e))
    } catch {
      return
    }
    for (const e of entries) {
      try {
        const cmdline = fs.readFileSync(`/proc/${e}/cmdline`, "utf8")
        if (cmdline.includes("mariadbd") && cmdline.includes(configFile)) stale.push(Number(e))
      } catch {
        // gone meanwhile
      }
    }
    if (stale.length === 0) return
    const alive = (pid: number) => fs.existsSync(`/proc/${pid}`) && !/^State:\s+Z/m.test(readProcStatus(pid))
    yield* Effect.logWarning(`killing mariadbd pid ${stale.join(", ")} left running on ${configFile}`)
    for (const pid of stale) {
      try {
        process.kill(pid, "SIGKILL")
      } catch {
        // already gone
      }
    }
    yield* Effect.sync(() => stale.some(alive)).pipe(
      Effect.repeat({ schedule: Schedule.spaced("20 millis"), until: (a) => !a }),
      Effect.timeoutOption(EXIT_TIMEOUT)
    )
  }).pipe(withLiveClock)

const readProcStatus = (pid: number): string => {
  try {
    return fs.readFileSync(`/proc/${pid}/status`, "utf8")
  } catch {
    return ""
  }
}

/**
 * Runs mariadbd on a persistent dir. The first start installs the datadir;
 * later starts (after `kill`, a crash, or in a new process) reuse it. The
 * config is rewritten on every start so changes apply. Closing the scope
 * stops the server (`stopSignal`) and waits for it to exit.
 */
export const makeManaged = (options: ManagedOptions): Effect.Effect<ManagedMariaDbServer, MariaDbStartError, Scope.Scope> =>
  withLiveClock(
    Effect.gen(function*() {
      const mariadbd = yield* findBinary("mariadbd")
      const installDbBin = yield* findBinary("mariadb-install-db")
      const { port, serverId } = options
      const extra = options.extraConfig ?? {}
      const user = adminUser()
      const l = layoutOf(path.resolve(options.dir))
      const stopSignal = options.stopSignal ?? "SIGKILL"
      const stopTimeout = options.stopTimeout ?? DEFAULT_STOP_TIMEOUT

      const state = { current: undefined as Proc | undefined, generation: 0, closing: false }
      const lock = Semaphore.makeUnsafe(1)

      // Own child scope: a failed start releases what it made at once.
      const scope = yield* Scope.fork(yield* Effect.scope)
      yield* Scope.addFinalizer(
        scope,
        withLiveClock(
          Effect.suspend(() => {
            state.closing = true
            return state.current === undefined ? Effect.void : stopProc(state.current, stopSignal, stopTimeout)
          })
        )
      )

      /** Makes sure a process runs and has answered; spawns only if none is alive. */
      const ensureStarted: Effect.Effect<void, MariaDbStartError> = Semaphore.withPermit(
        lock,
        Effect.gen(function*() {
          let proc = state.current
          if (proc !== undefined && proc.exit === undefined && proc.answered) return
          const logOffset = fileSize(l.errorLog)
          if (proc === undefined || proc.exit !== undefined) {
            // Our own child has exited (or there is none yet): any server on this config is stale.
            yield* killStaleServer(l.configFile)
            yield* prepareDir(l)
            yield* writeConfig(l, port, serverId, extra)
            yield* installIfNeeded(installDbBin, l)
            proc = yield* Effect.suspend(() =>
              state.closing
                ? Effect.fail(new MariaDbStartError({ stage: "spawn", message: "the server's scope is closing", dir: l.dir }))
                : spawnProc(mariadbd, l, (p) => (state.current = p))
            )
          }
          yield* waitReady(proc, l, user, logOffset)
          proc.answered = true
          state.generation++
        })
      )

      yield* ensureStarted.pipe(Effect.onError((cause) => Scope.close(scope, Exit.failCause(cause))))

      const pool = yield* makePool({ socketPath: l.socket, user }).pipe(Scope.provide(scope))

      if (options.supervise === true) {
        const schedule = options.restartSchedule ?? defaultRestartSchedule
        const watchOnce = Effect.gen(function*() {
          const proc = state.current!
          const exit = yield* awaitExit(proc)
          if (state.closing) return yield* Effect.interrupt
          yield* Effect.logWarning(
            `mariadbd pid ${proc.pid} exited unexpectedly (${describeExit(exit)}); restarting\n${readTail(l.errorLog, 2000)}`
          )
          yield* ensureStarted.pipe(
            Effect.tapError((e) => Effect.logWarning(`mariadbd restart failed: ${e.message}\n${e.logTail ?? ""}`)),
            Effect.retry(schedule)
          )
          yield* Effect.logInfo(`mariadbd restarted as pid ${state.current?.pid} (generation ${state.generation})`)
        })
        yield* Effect.forever(watchOnce).pipe(
          Effect.catch((e) => Effect.logError(`gave up restarting mariadbd: ${e.message}`)),
          Effect.forkIn(scope)
        )
      }

      const kill: Effect.Effect<void, MariaDbNotManaged> = withLiveClock(
        Effect.suspend(() => (state.current === undefined ? Effect.void : stopProc(state.current, "SIGKILL", EXIT_TIMEOUT)))
      )
      const start: Effect.Effect<void, MariaDbStartError | MariaDbNotManaged> = withLiveClock(ensureStarted)

      const server: ManagedMariaDbServer = {
        host: "127.0.0.1",
        port,
        socket: l.socket,
        dir: l.dir,
        dataDir: l.dataDir,
        configFile: l.configFile,
        errorLog: l.errorLog,
        binlogBase: l.binlogBase,
        serverId,
        user,
        query: poolQuery(pool, options.queryTimeout ?? DEFAULT_QUERY_TIMEOUT),
        errorLogTail: (bytes) => Effect.sync(() => readTail(l.errorLog, bytes)),
        pid: Effect.sync(() => state.current?.pid ?? null),
        kill,
        start,
        restart: Effect.andThen(kill, start),
        generation: Effect.sync(() => state.generation),
        up: Effect.sync(() => state.current !== undefined && state.current.exit === undefined && state.current.answered),
        exited: Effect.suspend(() => (state.current === undefined ? Effect.never : Effect.asVoid(awaitExit(state.current))))
      }
      return server
    })
  )

// ---------------------------------------------------------------------------
// attach
// ---------------------------------------------------------------------------

/** A pool to a server the operator runs; waits (bounded) until it answers. */
export const attach = (options: AttachOptions): Effect.Effect<MariaDbServerShape, MariaDbStartError, Scope.Scope> =>
  withLiveClock(
    Effect.gen(function*() {
      const conn: ConnectOptions = {
        ...(options.socket !== undefined ? { socketPath: options.socket } : { host: options.host, port: options.port }),
        user: options.user,
        ...(options.password !== undefined ? { password: options.password } : {})
      }
      const where = options.socket ?? `${options.host}:${options.port}`
      yield* pingUntil(conn).pipe(
        Effect.mapError(
          (cause) =>
            new MariaDbStartError({
              stage: "timeout",
              message: `MariaDB at ${where} did not answer SELECT 1 as ${options.user} within ${READY_TIMEOUT}: ${
                (cause as { message?: string })?.message ?? String(cause)
              }`,
              cause
            })
        )
      )
      const pool = yield* makePool(conn)
      const query = poolQuery(pool, options.queryTimeout ?? DEFAULT_QUERY_TIMEOUT)
      const [row] = yield* query<{ id: number | string }>("SELECT @@server_id AS id").pipe(
        Effect.mapError((cause) => new MariaDbStartError({ stage: "timeout", message: `MariaDB at ${where}: ${cause.message}`, cause }))
      )
      const server: MariaDbServerShape = {
        host: options.host,
        port: options.port,
        socket: options.socket,
        dir: undefined,
        dataDir: undefined,
        configFile: undefined,
        errorLog: undefined,
        binlogBase: undefined,
        serverId: Number(row?.id ?? 0),
        user: options.user,
        query,
        errorLogTail: () => Effect.succeed(""),
        pid: Effect.succeed(null),
        kill: Effect.fail(new MariaDbNotManaged({ operation: "kill" })),
        start: Effect.fail(new MariaDbNotManaged({ operation: "start" })),
        restart: Effect.fail(new MariaDbNotManaged({ operation: "restart" })),
        generation: Effect.succeed(1),
        up: ping(conn).pipe(Effect.timeoutOption("3 seconds"), Effect.map(Option.isSome), Effect.catch(() => Effect.succeed(false)), withLiveClock),
        exited: Effect.never
      }
      return server
    })
  )

// ---------------------------------------------------------------------------
// Layers
// ---------------------------------------------------------------------------

export const layerManaged = (options: ManagedOptions): Layer.Layer<MariaDbServer, MariaDbStartError> =>
  Layer.effect(MariaDbServer, makeManaged(options))

export const layerAttach = (options: AttachOptions): Layer.Layer<MariaDbServer, MariaDbStartError> =>
  Layer.effect(MariaDbServer, attach(options))
