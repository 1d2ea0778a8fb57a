import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as ClusterClient from "../src/client/ClusterClient.js"
import * as LocalCluster from "../src/testing/LocalCluster.js"
import { adminQuery, APP_PASSWORD, APP_USER, createAppUser, mariadbPid, waitForMaster } from "./support/dbCluster.js"

describe("ClusterClient", () => {
  it.live("writes through whichever member answers, rides out a master's SIGKILL, reads from RO, and types its failures", () =>
    Effect.gen(function*() {
      const c = yield* LocalCluster.make({ nodes: 3, database: true })
      const master = yield* waitForMaster(c, "a first master")
      yield* createAppUser(master)
      yield* adminQuery(master, "CREATE DATABASE IF NOT EXISTS d")
      yield* adminQuery(master, "CREATE TABLE IF NOT EXISTS d.t (id INT PRIMARY KEY, v VARCHAR(32))")
      const client = yield* ClusterClient.make({
        // The master's member first: after its death the client must move on by itself.
        members: [master, ...c.nodes.filter((n) => n !== master)].map((n) => ({ host: n.host, rwPort: n.rwPort!, roPort: n.roPort })),
        user: APP_USER,
        password: APP_PASSWORD,
        failoverTimeout: "30 seconds"
      })
      yield* client.query("INSERT INTO d.t VALUES (?, ?)", [1, "before"])

      // The master's mariadbd dies: the next statements wait for the new master, then land.
      process.kill(mariadbPid(master), "SIGKILL")
      const after = yield* waitForMaster(c, "a new master", master.nodeId, 30_000)
      for (let id = 2; id <= 5; id++) yield* client.query("INSERT INTO d.t VALUES (?, ?)", [id, `after ${after.nodeId}`])
      yield* client.transaction((tx) => tx.query("UPDATE d.t SET v = ? WHERE id = ?", ["updated", 1]))

      const rows = (yield* client.query("SELECT id, v FROM d.t ORDER BY id")).rows
      expect(rows.map((r) => r["id"])).toEqual([1, 2, 3, 4, 5])
      expect(rows[0]!["v"]).toBe("updated")
      // RO reaches a replica (it may trail the master: wait for it, bounded).
      yield* LocalCluster.waitFor("the RO port to show every row",
        Effect.map(client.read("SELECT COUNT(*) AS n FROM d.t"), (r) => Number(r.rows[0]!["n"]) === 5), 20_000)

      // Errors are typed: an SQL error is SqlError (with the server's errno), not a retry.
      const duplicate = yield* Effect.flip(client.query("INSERT INTO d.t VALUES (?, ?)", [1, "again"]))
      expect(duplicate).toMatchObject({ _tag: "SqlError", errno: 1062 })
      // A failing transaction body rolls back: nothing of it is committed.
      const failed = yield* Effect.flip(client.transaction((tx) =>
        Effect.andThen(tx.query("INSERT INTO d.t VALUES (?, ?)", [6, "rolled back"]), Effect.fail("body failed" as const))))
      expect(failed).toBe("body failed")
      expect((yield* client.query("SELECT COUNT(*) AS n FROM d.t WHERE id = 6")).rows[0]!["n"]).toBe(0)
    }), { timeout: 180_000 })

  it.live("with no member reachable, fails with NoServerAvailable after the failover timeout", () =>
    Effect.gen(function*() {
      const port = yield* LocalCluster.freePort()
      const client = yield* ClusterClient.make({ members: [{ host: "127.0.0.1", rwPort: port }], user: "nobody", failoverTimeout: "1 second" })
      const error = yield* Effect.flip(client.query("SELECT 1"))
      expect(error._tag).toBe("NoServerAvailable")
      expect(error).toMatchObject({ port: "rw", tried: [`127.0.0.1:${port}`] })
    }))
})
