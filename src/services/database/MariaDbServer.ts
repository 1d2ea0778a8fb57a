/**
 * This node's MariaDB, behind one shape whether the agent runs mariadbd itself
 * (`makeManaged`: a persistent dir, optionally supervised) or the operator
 * does (`attach`). Everything the agent does to its server (queries, fencing
 * by crash, restarts) goes through here.
 *
 * Crash semantics matter: fencing relies on a killed server never committing
 * transactions that still wait for the semi-sync ACK, so the default stop is
 * SIGKILL, never a clean shutdown.
 *
 * Its parts: MariaDbLayout.ts (the files), MariaDbProcess.ts (the mariadbd
 * process), MariaDbPool.ts (queries), MariaDbErrors.ts.
 */
import * as path from "node:path"
import { Context, Duration, Effect, Exit, Layer, Option, Schedule, Semaphore } from "effect"
import * as Scope from "effect/Scope"
import { MariaDbNotManaged, type MariaDbQueryError, MariaDbStartError } from "./MariaDbErrors.js"
import {
  adminUser,
  type ExtraConfig,
  fileSize,
  findBinary,
  installIfNeeded,
  layoutOf,
  ownDir,
  prepareDir,
  readTail,
  writeConfig
} from "./MariaDbLayout.js"
import { type ConnectOptions, makePool, ping, pingUntil, poolQuery, READY_TIMEOUT, type Row, withLiveClock } from "./MariaDbPool.js"
import {
  awaitExit,
  describeExit,
  EXIT_TIMEOUT,
  killStaleServer,
  type Proc,
  spawnProc,
  stopProc,
  waitReady
} from "./MariaDbProcess.js"

// Part of this module's API (and of the library's `MariaDbServer` namespace).
export { MariaDbNotManaged, MariaDbQueryError, MariaDbStartError } from "./MariaDbErrors.js"
export type { ExtraConfig } from "./MariaDbLayout.js"
export type { Row } from "./MariaDbPool.js"
export { killChildrenOnExit, killStaleServer } from "./MariaDbProcess.js"

// ---------------------------------------------------------------------------
// API
// ---------------------------------------------------------------------------

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

const DEFAULT_STOP_TIMEOUT: Duration.Input = "30 seconds"
const DEFAULT_QUERY_TIMEOUT: Duration.Input = "10 seconds"

const defaultRestartSchedule: Schedule.Schedule<unknown, MariaDbStartError> = Schedule.min([
  Schedule.exponential("200 millis"),
  Schedule.spaced("2 seconds")
]).pipe(Schedule.jittered)

// ---------------------------------------------------------------------------
// makeManaged
// ---------------------------------------------------------------------------

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
            yield* ownDir(l)
            yield* installIfNeeded(installDbBin, l)
            yield* ownDir(l)
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
