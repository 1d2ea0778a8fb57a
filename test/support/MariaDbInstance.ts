/**
 * A throw-away mariadbd for tests: its own temp dir, config, port and
 * process, all owned by a Scope. A thin layer over the production
 * `MariaDbServer.makeManaged` (unsupervised) that adds the temp dir and a
 * free port.
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
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { Clock, Effect } from "effect"
import type * as Scope from "effect/Scope"
import * as MariaDbServer from "../../src/services/database/MariaDbServer.js"
import { MariaDbQueryError, MariaDbStartError, type Row } from "../../src/services/database/MariaDbServer.js"

export { MariaDbQueryError, MariaDbStartError, type Row }

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
// Safety net: remove temp dirs still present when the process exits
// ---------------------------------------------------------------------------

const liveDirs = new Set<string>()
let exitHookInstalled = false

/**
 * Installed after the first server spawned, so it runs after
 * MariaDbServer's own hook has killed the processes using these dirs.
 */
const installExitHook = () => {
  if (exitHookInstalled) return
  exitHookInstalled = true
  process.on("exit", () => {
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

const PORT_ATTEMPTS = 5

let nextServerId = 1

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
    // 0711: a mariadbd run as `mysql` (tests as root) must pass through.
    try: () => fs.promises.mkdtemp(path.join(os.tmpdir(), "phxmaria-mariadb-")).then(async (d) => (await fs.promises.chmod(d, 0o711), d)),
    catch: (cause) => new MariaDbStartError({ stage: "tempdir", message: `mkdtemp failed: ${String(cause)}`, cause })
  }).pipe(Effect.tap((dir) => Effect.sync(() => liveDirs.add(dir)))),
  (dir) =>
    Effect.promise(() => fs.promises.rm(dir, { recursive: true, force: true, maxRetries: 3 }).catch(() => undefined)).pipe(
      Effect.tap(() => Effect.sync(() => liveDirs.delete(dir)))
    )
)

// ---------------------------------------------------------------------------
// make
// ---------------------------------------------------------------------------

const make = (options: MariaDbInstanceOptions = {}): Effect.Effect<MariaDbInstanceInfo, MariaDbStartError, Scope.Scope> =>
  withLiveClock(
    Effect.gen(function*() {
      const serverId = options.serverId ?? nextServerId++
      // Released after the server (acquired first): the process is gone before its dir.
      const dir = yield* makeTempDir

      // If another process grabbed the port between picking and binding, pick again.
      const server = yield* Effect.flatMap(freePort, (port) =>
        MariaDbServer.makeManaged({ dir, port, serverId, extraConfig: options.extraConfig, supervise: false })
      ).pipe(
        Effect.retry({ times: PORT_ATTEMPTS - 1, while: (e) => e.portInUse === true }),
        Effect.ensuring(Effect.sync(installExitHook))
      )

      const info: MariaDbInstanceInfo = {
        host: server.host,
        port: server.port,
        socket: server.socket,
        dir: server.dir,
        dataDir: server.dataDir,
        configFile: server.configFile,
        errorLog: server.errorLog,
        binlogBase: server.binlogBase,
        serverId: server.serverId,
        get pid() {
          return Effect.runSync(server.pid) ?? -1
        },
        user: server.user,
        query: server.query,
        errorLogTail: server.errorLogTail,
        // A managed server never fails these with MariaDbNotManaged.
        kill: Effect.orDie(server.kill),
        start: Effect.catchTag(server.start, "MariaDbNotManaged", Effect.die)
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
