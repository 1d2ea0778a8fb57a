/**
 * The mariadbd process: spawn, wait until it answers, track its exit, stop it; the
 * /proc scan that kills a stale server; the exit hook that kills children left running.
 */
import { type ChildProcess, spawn } from "node:child_process"
import * as fs from "node:fs"
import { Duration, Effect, Option, Schedule } from "effect"
import { MariaDbStartError } from "./MariaDbErrors.js"
import { type Layout, mariadbEnv, readFrom, readTail } from "./MariaDbLayout.js"
import { pingUntil, READY_TIMEOUT, withLiveClock } from "./MariaDbPool.js"

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
// One mariadbd process: spawn, wait until it answers, stop
// ---------------------------------------------------------------------------

export const EXIT_TIMEOUT = "10 seconds"

interface ExitInfo {
  readonly code: number | null
  readonly signal: string | null
  readonly error?: Error | undefined
}

export interface Proc {
  readonly child: ChildProcess
  readonly pid: number
  /** Resolves once the process has exited (and been reaped). */
  readonly exited: Promise<ExitInfo>
  exit: ExitInfo | undefined
  answered: boolean
}

export const describeExit = (e: ExitInfo) => (e.error !== undefined ? e.error.message : `code ${e.code}, signal ${e.signal}`)

/** Spawns mariadbd and hands the process to `register` in the same synchronous step, so none escapes. */
export const spawnProc = (mariadbd: string, l: Layout, register: (proc: Proc) => void): Effect.Effect<Proc, MariaDbStartError> =>
  Effect.suspend(() => {
    const child = spawn(mariadbd, [`--defaults-file=${l.configFile}`], { stdio: "ignore", env: mariadbEnv() })
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

export const awaitExit = (proc: Proc): Effect.Effect<ExitInfo> => Effect.promise(() => proc.exited)

const signal = (proc: Proc, sig: NodeJS.Signals) => {
  if (proc.exit !== undefined) return
  try {
    proc.child.kill(sig)
  } catch {
    // already gone
  }
}

export const stopProc = (proc: Proc, how: "SIGKILL" | "SIGTERM", grace: Duration.Input): Effect.Effect<void> =>
  Effect.gen(function*() {
    if (proc.exit !== undefined) return
    if (how === "SIGTERM") {
      signal(proc, "SIGTERM")
      if (Option.isSome(yield* awaitExit(proc).pipe(Effect.timeoutOption(grace)))) return
      yield* Effect.logWarning(`mariadbd pid ${proc.pid} did not stop within ${Duration.format(Duration.fromInputUnsafe(grace))} of SIGTERM; sending SIGKILL`)
    }
    signal(proc, "SIGKILL")
    // Callers rely on a killed server committing nothing more, so this waits
    // for the exit (a process in an uninterruptible fsync dies late), warning.
    while (Option.isNone(yield* awaitExit(proc).pipe(Effect.timeoutOption(EXIT_TIMEOUT)))) {
      yield* Effect.logWarning(`mariadbd pid ${proc.pid} has not exited ${EXIT_TIMEOUT} after SIGKILL; still waiting`)
    }
  })

/** Waits until the server answers, failing early if the process exits. */
export const waitReady = (proc: Proc, l: Layout, user: string, logOffset: number): Effect.Effect<void, MariaDbStartError> => {
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

// ---------------------------------------------------------------------------
// A server left running by an earlier agent
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
