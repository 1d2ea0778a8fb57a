import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Data, Effect, Schedule } from "effect"
import * as MariaDbServer from "../src/services/database/MariaDbServer.js"

class NotYet extends Data.TaggedError("NotYet")<{ readonly what: string }> {}
class UnexpectedSuccess extends Data.TaggedError("UnexpectedSuccess")<{ readonly message: string }> {}

/** The effect's error; a success fails the test saying which step should not have succeeded. */
const failureOf = <A, E>(step: string, effect: Effect.Effect<A, E>): Effect.Effect<E, UnexpectedSuccess> =>
  Effect.flip(effect).pipe(
    Effect.mapError((value) => new UnexpectedSuccess({ message: `${step} succeeded with ${JSON.stringify(value)}` }))
  )

const isAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ESRCH") return false
    throw e
  }
}

const tempDir = (prefix: string) =>
  Effect.acquireRelease(
    // 0711: a mariadbd run as `mysql` (tests as root) must pass through.
    Effect.promise(() => fs.promises.mkdtemp(path.join(os.tmpdir(), prefix)).then(async (d) => (await fs.promises.chmod(d, 0o711), d))),
    (dir) => Effect.promise(() => fs.promises.rm(dir, { recursive: true, force: true, maxRetries: 3 }))
  )

const freePort = Effect.promise(
  () =>
    new Promise<number>((resolve, reject) => {
      const server = net.createServer()
      server.once("error", reject)
      server.listen(0, "127.0.0.1", () => {
        const port = (server.address() as net.AddressInfo).port
        server.close(() => resolve(port))
      })
    })
)

/** Retries `check` every 100 ms for up to 30 s. */
const eventually = <A, E>(check: Effect.Effect<A, E>) =>
  check.pipe(Effect.retry({ schedule: Schedule.spaced("100 millis").pipe(Schedule.upTo({ duration: "30 seconds" })) }))

const whichReal = (name: string): string => {
  for (const dir of [...(process.env.PATH ?? "").split(path.delimiter), "/usr/sbin", "/usr/bin"]) {
    const candidate = path.join(dir, name)
    if (dir.length > 0 && fs.existsSync(candidate)) return candidate
  }
  throw new Error(`${name} not found`)
}

/**
 * Puts a counting mariadb-install-db first on PATH for the scope: the service
 * looks binaries up on PATH, so every install run is recorded.
 */
const countInstallRuns = Effect.gen(function*() {
  const binDir = yield* tempDir("phxmaria-spy-")
  const countFile = path.join(binDir, "runs")
  const real = whichReal("mariadb-install-db")
  fs.writeFileSync(countFile, "")
  fs.writeFileSync(
    path.join(binDir, "mariadb-install-db"),
    `#!/bin/sh\necho run >> '${countFile}'\nexec '${real}' "$@"\n`,
    { mode: 0o755 }
  )
  yield* Effect.acquireRelease(
    Effect.sync(() => {
      const saved = process.env.PATH
      process.env.PATH = `${binDir}${path.delimiter}${saved ?? ""}`
      return saved
    }),
    (saved) => Effect.sync(() => (process.env.PATH = saved))
  )
  return Effect.sync(() => fs.readFileSync(countFile, "utf8").split("\n").filter((l) => l === "run").length)
})

describe("MariaDbServer", () => {
  it.live("keeps a persistent dir across runs: data survives, install-db runs once, config is rewritten", () =>
    Effect.gen(function*() {
      const dir = path.join(yield* tempDir("phxmaria-server-"), "node")
      const installRuns = yield* countInstallRuns

      const firstPid = yield* Effect.scoped(
        Effect.gen(function*() {
          const db = yield* MariaDbServer.makeManaged({ dir, port: yield* freePort, serverId: 21 })
          expect(yield* db.generation).toBe(1)
          expect(yield* db.up).toBe(true)
          yield* db.query("CREATE DATABASE keep")
          yield* db.query("CREATE TABLE keep.t (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB")
          yield* db.query("INSERT INTO keep.t VALUES (?, ?)", [1, "first run"])
          return (yield* db.pid)!
        })
      )
      expect(isAlive(firstPid)).toBe(false)
      expect(fs.existsSync(path.join(dir, "data", "mysql"))).toBe(true)
      expect(yield* installRuns).toBe(1)

      const port = yield* freePort
      const secondPid = yield* Effect.scoped(
        Effect.gen(function*() {
          const db = yield* MariaDbServer.makeManaged({
            dir,
            port,
            serverId: 22,
            extraConfig: { max_connections: 77 },
            stopSignal: "SIGTERM"
          })
          expect(yield* db.query("SELECT id, v FROM keep.t")).toEqual([{ id: 1, v: "first run" }])
          expect(yield* db.query("SELECT @@port AS port, @@server_id AS id, @@max_connections AS mc")).toEqual([
            { port, id: 22, mc: 77 }
          ])
          return (yield* db.pid)!
        })
      )
      expect(secondPid).not.toBe(firstPid)
      expect(isAlive(secondPid)).toBe(false)
      expect(yield* installRuns).toBe(1)
      // SIGTERM: a clean shutdown this time
      expect(fs.readFileSync(path.join(dir, "error.log"), "utf8")).toMatch(/Shutdown complete/)
    }))

  it.live("mariadbd runs without the agent's glibc malloc settings (they slowed its large rows), with the rest of its environment", () =>
    Effect.gen(function*() {
      // The agent's own setting (LocalCluster.AGENT_ENV, the systemd unit), for this test only.
      yield* Effect.acquireRelease(
        Effect.sync(() => (process.env.MALLOC_MMAP_THRESHOLD_ = "4194304")),
        () => Effect.sync(() => delete process.env.MALLOC_MMAP_THRESHOLD_)
      )
      const db = yield* MariaDbServer.makeManaged({ dir: yield* tempDir("phxmaria-server-"), port: yield* freePort, serverId: 41 })
      const environ = fs.readFileSync(`/proc/${(yield* db.pid)!}/environ`, "utf8").split("\0")
      expect(environ.filter((v) => v.startsWith("MALLOC_"))).toEqual([])
      expect(environ).toContain(`PATH=${process.env.PATH}`)
    }))

  it.live("supervised: restarts mariadbd after an outside SIGKILL", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir("phxmaria-server-")
      const db = yield* MariaDbServer.makeManaged({ dir, port: yield* freePort, serverId: 31, supervise: true })
      yield* db.query("CREATE TABLE mysql.phx_kept (id INT PRIMARY KEY) ENGINE=InnoDB")
      yield* db.query("INSERT INTO mysql.phx_kept VALUES (7)")
      const generation = yield* db.generation
      const pid = (yield* db.pid)!

      process.kill(pid, "SIGKILL")

      yield* eventually(
        Effect.gen(function*() {
          if ((yield* db.generation) <= generation) return yield* new NotYet({ what: "generation" })
          return yield* db.query("SELECT id FROM mysql.phx_kept")
        })
      ).pipe(Effect.map((rows) => expect(rows).toEqual([{ id: 7 }])))
      expect(yield* db.generation).toBe(generation + 1)
      const newPid = (yield* db.pid)!
      expect(newPid).not.toBe(pid)
      expect(isAlive(pid)).toBe(false)
      expect(isAlive(newPid)).toBe(true)
      expect(yield* db.up).toBe(true)
    }))

  it.live("attach: queries a server run by someone else and refuses to manage it", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir("phxmaria-server-")
      const managed = yield* MariaDbServer.makeManaged({ dir, port: yield* freePort, serverId: 41 })
      yield* managed.query("SET STATEMENT sql_log_bin=0 FOR CREATE USER 'operator'@'127.0.0.1' IDENTIFIED BY 'secret'")
      yield* managed.query("SET STATEMENT sql_log_bin=0 FOR GRANT ALL ON *.* TO 'operator'@'127.0.0.1'")

      const db = yield* MariaDbServer.attach({ host: "127.0.0.1", port: managed.port, user: "operator", password: "secret" })
      expect(db.serverId).toBe(41)
      expect(yield* db.query("SELECT CURRENT_USER() AS u")).toEqual([{ u: "operator@127.0.0.1" }])
      expect(yield* db.pid).toBeNull()
      expect(yield* db.generation).toBe(1)
      expect(yield* db.up).toBe(true)

      const killed = yield* Effect.flip(db.kill)
      expect(killed._tag).toBe("MariaDbNotManaged")
      expect(killed.operation).toBe("kill")
      expect((yield* Effect.flip(db.start))._tag).toBe("MariaDbNotManaged")
      expect((yield* Effect.flip(db.restart))._tag).toBe("MariaDbNotManaged")
      expect(isAlive((yield* managed.pid)!)).toBe(true)

      // A server that stops answering makes queries fail after the bound, not hang.
      const pid = (yield* managed.pid)!
      const impatient = yield* MariaDbServer.attach({
        host: "127.0.0.1",
        port: managed.port,
        user: "operator",
        password: "secret",
        queryTimeout: "1 second"
      })
      process.kill(pid, "SIGSTOP")
      // The signal is delivered asynchronously: on a busy machine a thread could still answer.
      const stopped = Effect.sync(() => fs.readFileSync(`/proc/${pid}/stat`, "utf8").replace(/^.*\) /s, "").startsWith("T"))
      yield* stopped.pipe(Effect.repeat({ schedule: Schedule.spaced("5 millis"), until: (s) => s }), Effect.timeout("5 seconds"))
      const timedOut = yield* failureOf("a query to a SIGSTOPped server", impatient.query("SELECT 1")).pipe(
        Effect.ensuring(Effect.sync(() => process.kill(pid, "SIGCONT")))
      )
      expect(timedOut.code).toBe("TIMEOUT")
      expect(yield* impatient.query("SELECT 1 AS one")).toEqual([{ one: 1 }])

      // A dead server makes queries fail at once.
      yield* managed.kill
      expect(isAlive(pid)).toBe(false)
      const error = yield* failureOf("a query to a killed server", db.query("SELECT 1"))
      expect(error._tag).toBe("MariaDbQueryError")
      expect(yield* db.up).toBe(false)
    }))
})
