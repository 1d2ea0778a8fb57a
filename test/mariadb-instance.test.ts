import * as fs from "node:fs"
import { describe, expect, it } from "@effect/vitest"
import { Data, Deferred, Effect, Exit, Fiber } from "effect"
import { MariaDbInstance, type MariaDbInstanceInfo } from "./support/MariaDbInstance.js"

class Boom extends Data.TaggedError("Boom")<{}> {}

const isAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ESRCH") return false
    throw e
  }
}

const expectGone = (info: MariaDbInstanceInfo) => {
  expect(isAlive(info.pid)).toBe(false)
  expect(fs.existsSync(info.dir)).toBe(false)
}

describe("MariaDbInstance", () => {
  it.effect("starts three instances at once, each with its own id and port, and removes them on release", () =>
    Effect.gen(function*() {
      const infos = yield* Effect.scoped(
        Effect.gen(function*() {
          const dbs = yield* Effect.all(
            [11, 12, 13].map((serverId) => MariaDbInstance.make({ serverId })),
            { concurrency: "unbounded" }
          )

          for (const db of dbs) {
            expect(isAlive(db.pid)).toBe(true)
            expect(fs.existsSync(db.dataDir)).toBe(true)
            const rows = yield* db.query<{ id: number; port: number }>("SELECT @@server_id AS id, @@port AS port")
            expect(rows).toEqual([{ id: db.serverId, port: db.port }])
          }
          expect(dbs.map((db) => db.serverId)).toEqual([11, 12, 13])
          expect(new Set(dbs.map((db) => db.port)).size).toBe(3)
          expect(new Set(dbs.map((db) => db.dir)).size).toBe(3)

          // binlog and GTIDs are on, as the cluster needs
          const [vars] = yield* dbs[0]!.query<{ log_bin: number; strict: number; fmt: string }>(
            "SELECT @@log_bin AS log_bin, @@gtid_strict_mode AS strict, @@binlog_format AS fmt"
          )
          expect(vars).toEqual({ log_bin: 1, strict: 1, fmt: "ROW" })

          // parameters and statements without a result set
          yield* dbs[1]!.query("CREATE DATABASE t")
          yield* dbs[1]!.query("CREATE TABLE t.kv (k INT PRIMARY KEY, v VARCHAR(20))")
          expect(yield* dbs[1]!.query("INSERT INTO t.kv VALUES (?, ?)", [1, "one"])).toEqual([])
          expect(yield* dbs[1]!.query("SELECT v FROM t.kv WHERE k = ?", [1])).toEqual([{ v: "one" }])
          return dbs
        })
      )
      for (const info of infos) expectGone(info)
    }))

  it.effect("reports a failed query as a typed MariaDbQueryError", () =>
    Effect.gen(function*() {
      const db = yield* MariaDbInstance.make()
      const error = yield* Effect.flip(db.query("SELECT * FROM no_such_db.no_such_table"))
      expect(error._tag).toBe("MariaDbQueryError")
      expect(error.code).toBe("ER_NO_SUCH_TABLE")
    }))

  it.effect("kills and removes the instance when its scope fails", () =>
    Effect.gen(function*() {
      let captured: MariaDbInstanceInfo | undefined
      const exit = yield* Effect.scoped(
        Effect.gen(function*() {
          const db = yield* MariaDbInstance.make()
          captured = db
          expect(isAlive(db.pid)).toBe(true)
          return yield* new Boom()
        })
      ).pipe(Effect.exit)
      expect(Exit.isFailure(exit)).toBe(true)
      expect(captured).toBeDefined()
      expectGone(captured!)
    }))

  it.effect("kills and removes the instance when its fiber is interrupted", () =>
    Effect.gen(function*() {
      const ready = yield* Deferred.make<MariaDbInstanceInfo>()
      const fiber = yield* Effect.scoped(
        Effect.gen(function*() {
          const db = yield* MariaDbInstance.make()
          yield* Deferred.succeed(ready, db)
          return yield* Effect.never
        })
      ).pipe(Effect.forkChild)
      const db = yield* Deferred.await(ready)
      expect(isAlive(db.pid)).toBe(true)
      yield* Fiber.interrupt(fiber)
      expectGone(db)
    }))

  it.effect("survives a SIGKILL and starts again on the same datadir and port", () =>
    Effect.gen(function*() {
      const db = yield* MariaDbInstance.make({})
      yield* db.query("CREATE DATABASE k")
      yield* db.query("CREATE TABLE k.kept (id INT PRIMARY KEY) ENGINE=InnoDB")
      yield* db.query("INSERT INTO k.kept VALUES (1)")
      const firstPid = db.pid
      yield* db.kill
      expect(isAlive(firstPid)).toBe(false)
      yield* db.start
      expect(db.pid).not.toBe(firstPid)
      expect(isAlive(db.pid)).toBe(true)
      expect(yield* db.query("SELECT id FROM k.kept")).toEqual([{ id: 1 }])
    }))
})
