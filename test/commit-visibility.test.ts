/**
 * Ways a client could read, or keep, a write that is not in the chosen log (issue 15's
 * safety part): an agent resumed after a stall past its lease, with queries queued on its
 * open RW connections.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { readFileSync } from "node:fs"
import { dirname, join } from "node:path"
import type mysql from "mysql2/promise"
import * as LocalCluster from "../src/testing/LocalCluster.js"
import { cut, iptablesUsable, removeRules } from "../bench/torture/faults.js"
import { adminQuery, clusterWithTable, connect, run, statuses, waitConverged, waitForMaster } from "./support/dbCluster.js"

const TABLE = "d.r"

/** A query sent now; its outcome (rows, or the error) is read later. */
const sendNow = (conn: mysql.Connection, sql: string) => {
  const outcome = conn.query(sql).then(
    ([rows]) => ({ rows: rows as ReadonlyArray<Record<string, unknown>> }),
    (e: unknown) => ({ error: e instanceof Error ? e.message : String(e) })
  )
  return Effect.promise(() => outcome)
}

/** SIGSTOPs a process for the scope (SIGCONT when it closes, also when the test fails). */
const stopped = (pid: number) =>
  Effect.acquireRelease(Effect.sync(() => process.kill(pid, "SIGSTOP")), () =>
    Effect.sync(() => {
      try {
        process.kill(pid, "SIGCONT")
      } catch {
        // Already gone.
      }
    }))

const noPartitions = iptablesUsable()

describe("no read or write reaches a database past its master's lease", () => {
  it.live.skipIf(noPartitions !== undefined)("an agent stopped past its lease, with a read and a write queued on its open RW connections, relays neither when it resumes", () =>
    Effect.gen(function*() {
      const { c, master } = yield* clusterWithTable({ nodes: 3, host: "per-node", database: true, lease: { leaseMs: 1_000 } }, TABLE)
      yield* adminQuery(master, `INSERT INTO ${TABLE} VALUES (1, 0)`)
      yield* waitConverged(c, 60_000)
      // Every statement the old master's mariadbd gets is in its general log (kept across its restarts).
      // In the server's own dir: the user mariadbd runs as can write there.
      const generalLog = join(dirname(master.mariadb!.pidFile), "general.log")
      yield* adminQuery(master, `SET GLOBAL general_log_file = '${generalLog}', GLOBAL general_log = 1`)
      // Two connections through the master's own RW port (relayed to its local MariaDB).
      const reader = yield* connect(master.rwPort!, { host: master.host })
      const writer = yield* connect(master.rwPort!, { host: master.host })
      expect(yield* run(reader, `SELECT v FROM ${TABLE} WHERE id = 1`)).toEqual([{ v: 0 }])

      const others = c.nodes.filter((n) => n.nodeId !== master.nodeId)
      const [readOutcome, writeOutcome] = yield* Effect.scoped(Effect.gen(function*() {
        // Cut off from its peers: on resuming it hears of no new master, and only its own
        // lease says it may not serve (the test's clients still reach it from 127.0.0.1).
        yield* Effect.acquireRelease(Effect.sync(() => cut([master], others)), () => Effect.sync(removeRules))
        const [read, write] = yield* Effect.scoped(Effect.gen(function*() {
          yield* stopped(master.pid()!)
          // Queued in the stopped agent's socket buffers; its mariadbd still runs, with read_only OFF.
          const read = sendNow(reader, `SELECT /* queued-read */ v FROM ${TABLE} WHERE id = 1`)
          const write = sendNow(writer, `UPDATE /* queued-write */ ${TABLE} SET v = 99 WHERE id = 1`)
          const next = yield* waitForMaster(c, "a new master while the old one's agent is stopped", master.nodeId, 30_000)
          const fresh = yield* connect(next.rwPort!, { host: next.host })
          yield* run(fresh, `UPDATE ${TABLE} SET v = 1 WHERE id = 1`)
          return [read, write] as const
        }))
        // Resumed (SIGCONT as that scope closed), still cut off: the queued bytes come first.
        return [yield* read, yield* write] as const
      }))
      expect(readOutcome, "the queued read must not return the value from before the new master's write").not.toEqual({ rows: [{ v: 0 }] })
      expect("error" in writeOutcome, `the queued write must fail, got ${JSON.stringify(writeOutcome)}`).toBe(true)
      const seen = readFileSync(generalLog, "utf8")
      expect(seen, "the old master's mariadbd got a statement queued after its lease").not.toMatch(/queued-(read|write)/)

      yield* waitConverged(c, 60_000)
      for (const n of c.nodes) expect(yield* adminQuery(n, `SELECT v FROM ${TABLE} WHERE id = 1`), `node ${n.nodeId}`).toEqual([{ v: 1 }])
      for (const s of yield* statuses(c)) expect("error" in s ? s.error : s.database?.diverged ?? null).toBeNull()
    }).pipe(Effect.scoped), { timeout: 240_000 })
})


describe("KILL cannot end a commit's wait for the log", () => {
  it.live("a session KILLs another's commit that waits for a majority: the row stays invisible until the log has chosen it", () =>
    Effect.gen(function*() {
      const { c, master } = yield* clusterWithTable({ nodes: 3, database: true, lease: { leaseMs: 4_000 } }, TABLE)
      yield* waitConverged(c, 60_000)
      const victim = yield* connect(master.rwPort!)
      const killer = yield* connect(master.rwPort!)
      const reader = yield* connect(master.rwPort!)
      const [{ id }] = (yield* run<{ id: number }>(victim, "SELECT CONNECTION_ID() AS id")) as [{ id: number }]
      const replicas = c.nodes.filter((n) => n.nodeId !== master.nodeId)
      const [killed, seenWhileWaiting] = yield* Effect.scoped(Effect.gen(function*() {
        // No majority: the commit waits for its ACK (the master keeps its lease a while).
        for (const r of replicas) yield* stopped(r.pid()!)
        const insert = sendNow(victim, `INSERT INTO ${TABLE} VALUES (7, 7)`)
        yield* LocalCluster.waitFor("the INSERT to wait for its ACK", Effect.map(
          adminQuery<{ n: number }>(master, "SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST WHERE STATE LIKE 'Waiting for semi-sync ACK%'"),
          (rows) => Number(rows[0]?.n) === 1
        ), 10_000)
        const killed = yield* sendNow(killer, `KILL QUERY ${id}`)
        yield* insert
        const seen = yield* sendNow(reader, `SELECT COUNT(*) AS n FROM ${TABLE} WHERE id = 7`)
        return [killed, seen] as const
      }))
      expect(killed).toEqual({ rows: expect.anything() })
      expect(seenWhileWaiting, "a row whose commit was killed before the log chose it was visible").not.toEqual({ rows: [{ n: 1 }] })
      // Replicas back: the entry is chosen and the row reaches every node, unless the master
      // lost its lease meanwhile (a loaded machine): then the never-acknowledged row is gone
      // everywhere. Either way every node ends the same.
      const epoch = Effect.map(statuses(c), (ss) => Math.max(...ss.map((s) => ("error" in s ? 0 : s.epoch))))
      const epochBefore = yield* epoch
      const rowsOf = Effect.forEach(c.nodes, (n) => Effect.map(adminQuery<{ n: unknown }>(n, `SELECT COUNT(*) AS n FROM ${TABLE} WHERE id = 7`), (r) => Number(r[0]?.n)))
      yield* LocalCluster.waitFor("row 7 on every node (or, after a master change, on none)", Effect.gen(function*() {
        const counts = yield* rowsOf
        return counts.every((n) => n === 1) || (counts.every((n) => n === 0) && (yield* epoch) > epochBefore)
      }), 60_000)
      yield* waitConverged(c, 60_000)
      expect(new Set(yield* rowsOf).size, "every node has the same rows").toBe(1)
      for (const s of yield* statuses(c)) expect("error" in s ? s.error : s.database?.diverged ?? null).toBeNull()
    }).pipe(Effect.scoped), { timeout: 240_000 })
})
