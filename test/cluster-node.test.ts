import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { existsSync, readFileSync } from "node:fs"
import { join } from "node:path"
import * as LocalCluster from "../src/testing/LocalCluster.js"
import {
  adminQuery,
  checksum,
  clusterWithTable,
  connect,
  idsOn,
  mariadbPid,
  run,
  runCli,
  startWriter,
  statuses,
  statusOf,
  waitConverged,
  waitForMaster
} from "./support/dbCluster.js"

const TABLE = "d.t"

/** A 3-node cluster with MariaDB, a master serving, the app user and the test table. */
const cluster = (
  options: { readonly lease?: { readonly leaseMs: number }; readonly rebuildAuto?: boolean; readonly log?: LocalCluster.LocalClusterOptions["log"] } = {}
) =>
  Effect.gen(function*() {
    const { rebuildAuto, ...rest } = options
    const database = rebuildAuto === undefined
      ? true
      : { rebuildAuto }
    return yield* clusterWithTable({ nodes: 3, database, ...rest }, TABLE)
  })

/** Every acknowledged write is on every node, and every node holds the same rows. */
const expectConsistent = (c: LocalCluster.LocalCluster, acked: ReadonlyArray<number>) =>
  Effect.gen(function*() {
    yield* waitConverged(c, 60_000)
    // A replica's reported lag is from its last check, and a commit is in the binlog before
    // it is visible: the tables are compared until they agree (bounded; a real divergence
    // stays and fails below).
    let sums: ReadonlyArray<string> = []
    yield* LocalCluster.waitFor("every node to hold the same rows", Effect.map(
      Effect.forEach(c.nodes, (n) => checksum(n, TABLE)),
      (s) => new Set(sums = s).size === 1
    ), 20_000).pipe(Effect.ignore)
    if (new Set(sums).size !== 1) {
      // Enough to see where the nodes differ.
      const detail = yield* Effect.forEach(c.nodes, (n) =>
        Effect.map(adminQuery(n, `SELECT @@gtid_binlog_pos AS pos, COUNT(*) AS n, MAX(id) AS mx FROM ${TABLE}`), (r) => ({ node: n.nodeId, ...r[0] })))
      console.error("nodes differ:", JSON.stringify(detail), JSON.stringify(yield* statuses(c)))
      for (const n of c.nodes) console.error(`--- node ${n.nodeId}\n${n.output().split("\n").filter((l) => /WARN|ERROR|role|stepping|resign/.test(l)).slice(-30).join("\n")}`)
    }
    expect(new Set(sums).size).toBe(1)
    for (const n of c.nodes) {
      const ids = yield* idsOn(n, TABLE)
      expect(acked.filter((k) => !ids.has(k))).toEqual([])
    }
  })

describe("the whole node: managed MariaDB, Paxos-replicated commits, proxy", () => {
  it.live("writes through every node's RW port land on the master and on every replica; RO reads a replica", () =>
    Effect.gen(function*() {
      const { c, master } = yield* cluster()
      let id = 0
      for (const n of c.nodes) {
        const conn = yield* connect(n.rwPort!)
        for (let i = 0; i < 20; i++) yield* run(conn, `INSERT INTO ${TABLE} VALUES (?, ?)`, [++id, n.nodeId])
        yield* run(conn, "BEGIN")
        yield* run(conn, `INSERT INTO ${TABLE} VALUES (?, ?)`, [++id, 0])
        yield* run(conn, `UPDATE ${TABLE} SET v = v + 100 WHERE id = 1`)
        yield* run(conn, "COMMIT")
        // RW is linearizable: a read after the commit sees it, on any node's RW port.
        const [row] = yield* run<{ n: number }>(conn, `SELECT COUNT(*) AS n FROM ${TABLE}`)
        expect(Number(row!.n)).toBe(id)
      }
      yield* expectConsistent(c, Array.from({ length: id }, (_, i) => i + 1))
      // The RO port of a replica serves its own data; of the master, a replica's (once the
      // master has seen its peers serve reads).
      yield* LocalCluster.waitFor("RO routes to replicas", Effect.map(statuses(c), (ss) =>
        ss.every((x) => !("error" in x) && (x.database?.role === "master") !== (x.proxy?.routes.ro.startsWith("local") ?? false))), 10_000)
      for (const n of c.nodes) {
        const ro = yield* connect(n.roPort!)
        const [row] = yield* run<{ n: number; server: number }>(ro, `SELECT COUNT(*) AS n, @@server_id AS server FROM ${TABLE}`)
        expect(Number(row!.n)).toBe(id)
        expect(Number(row!.server)).not.toBe(1_000_000 + 1) // a replica's id, never a master term's
        const ro2 = yield* run<{ ro: number }>(ro, "SELECT @@read_only AS ro")
        expect(Number(ro2[0]!.ro)).toBe(1)
      }
      // Connection counts reach the status endpoint.
      const s = yield* statusOf(master)
      expect("error" in s).toBe(false)
      if (!("error" in s)) expect(s.proxy?.listeners["rw"]?.accepted).toBeGreaterThanOrEqual(1)
    }), 120_000)

  for (const fault of ["mariadbd SIGKILL", "agent SIGKILL", "SIGSTOP beyond the lease"] as const) {
    it.live(`fails over on ${fault} of the master: every acknowledged write survives and the old master rejoins`, () =>
      Effect.gen(function*() {
        const { c, master } = yield* cluster()
        const other = c.nodes.find((n) => n !== master)!
        // The writer stops (its scope closes) before the nodes are compared.
        const acked = yield* Effect.scoped(Effect.gen(function*() {
          const writer = yield* startWriter(other.rwPort!, TABLE)
          yield* LocalCluster.waitFor("writes before the fault", Effect.sync(() => writer.acked.length >= 50), 20_000)
          const before = writer.acked.length
          const mariadb = mariadbPid(master)
          if (fault === "mariadbd SIGKILL") process.kill(mariadb, "SIGKILL")
          else if (fault === "agent SIGKILL") yield* master.kill("SIGKILL")
          else {
            process.kill(master.pid()!, "SIGSTOP")
            process.kill(mariadb, "SIGSTOP")
          }
          const next = yield* waitForMaster(c, "a new master", master.nodeId).pipe(
            Effect.ensuring(Effect.sync(() => {
              if (fault === "SIGSTOP beyond the lease") {
                process.kill(mariadb, "SIGCONT")
                process.kill(master.pid()!, "SIGCONT")
              }
            }))
          )
          expect(next.nodeId).not.toBe(master.nodeId)
          yield* LocalCluster.waitFor("writes through the new master", Effect.sync(() => writer.acked.length >= before + 50), 30_000)
          if (fault === "agent SIGKILL") yield* master.start
          // The old master comes back as a replica of the new one.
          yield* LocalCluster.waitFor("the old master to rejoin as a replica", Effect.map(statusOf(master), (s) =>
            !("error" in s) && s.database?.role === "replica" && s.database.lag === 0), 60_000)
          return writer
        })).pipe(Effect.map((w) => [...w.acked]))
        yield* expectConsistent(c, acked)
      }), 180_000)
  }

  it.live("a commit waits while a majority of agents is down and returns once it is back", () =>
    Effect.gen(function*() {
      // A long lease: the master keeps it while the others are stopped for a few seconds.
      const { c, master } = yield* cluster({ lease: { leaseMs: 15_000 } })
      const conn = yield* connect(master.rwPort!)
      yield* run(conn, `INSERT INTO ${TABLE} VALUES (1, 1)`)
      const others = c.nodes.filter((n) => n !== master)
      for (const n of others) process.kill(n.pid()!, "SIGSTOP")
      const commit = yield* Effect.forkChild(run(conn, `INSERT INTO ${TABLE} VALUES (2, 2)`))
      const early = yield* Fiber.join(commit).pipe(Effect.timeoutOption("3 seconds"))
      for (const n of others) process.kill(n.pid()!, "SIGCONT")
      expect(early._tag).toBe("None")
      yield* Fiber.join(commit).pipe(Effect.timeout("10 seconds"))
      yield* expectConsistent(c, [1, 2])
    }), 120_000)

  it.live("a write straight to a replica's MariaDB is rebuilt away (the node diverges, sets its datadir aside, takes a copy from a healthy peer, ends with the master's tables); an operator's rebuild is refused by the master and taken by a replica", () =>
    Effect.gen(function*() {
      const { c, master } = yield* cluster()
      const conn = yield* connect(master.rwPort!)
      yield* run(conn, `INSERT INTO ${TABLE} VALUES (1, 1)`)
      yield* waitConverged(c)
      const replica = c.nodes.find((n) => n !== master)!
      const rebuilt = () => /rebuild: copied \d+ MB from node \d/.test(replica.output())
      yield* adminQuery(replica, `INSERT INTO ${TABLE} VALUES (999, 999)`)
      yield* run(conn, `INSERT INTO ${TABLE} VALUES (2, 2)`)
      yield* LocalCluster.waitFor("the replica to be rebuilt", Effect.sync(rebuilt), 30_000)
      yield* expectConsistent(c, [1, 2])
      expect([...(yield* idsOn(replica, TABLE))].sort((a, b) => a - b)).toEqual([1, 2])
      expect(replica.output()).toContain("rebuilding this node's database (it had diverged")
      // It reports its replay until it has caught up, then says it is done.
      yield* LocalCluster.waitFor("the rebuild to report itself done", Effect.sync(() => /rebuild done: \d+ transactions replayed/.test(replica.output())), 20_000)
      const after = yield* statusOf(replica)
      expect("error" in after ? "error" : after.database?.rebuild ?? null).toBeNull()
      // The diverged datadir is kept for the operator.
      const dataDir = (JSON.parse(readFileSync(replica.configPath, "utf8")) as { dataDir: string }).dataDir
      expect(existsSync(join(dataDir, "mariadb.diverged"))).toBe(true)
      yield* run(conn, `INSERT INTO ${TABLE} VALUES (3, 3)`)
      yield* expectConsistent(c, [1, 2, 3])

      // An operator's rebuild: the master refuses it, a replica takes it and comes back equal.
      const cli = (node: LocalCluster.LocalNode) => runCli(["rebuild", "--config", node.configPath])
      const refused = yield* cli(master)
      expect(refused.code).not.toBe(0)
      expect(refused.out).toContain("may serve RW")
      const other = c.nodes.find((n) => n !== master && n !== replica)!
      const taken = yield* cli(other)
      expect(taken.out).toContain("rebuild requested")
      expect(taken.code).toBe(0)
      yield* LocalCluster.waitFor("the other replica to be rebuilt", Effect.sync(() => other.output().includes("an operator asked for it")), 30_000)
      yield* run(conn, `INSERT INTO ${TABLE} VALUES (4, 4)`)
      yield* expectConsistent(c, [1, 2, 3, 4])
    }), 120_000)

  it.live("every node purges its MariaDB binlog files past log.retainSeconds, and the cluster still replicates and fails over", () =>
    Effect.gen(function*() {
      const { c, master } = yield* cluster({ log: { retainSeconds: 1 } })
      const conn = yield* connect(master.rwPort!)
      yield* run(conn, `INSERT INTO ${TABLE} VALUES (1, 1)`)
      yield* waitConverged(c)
      const files = (n: LocalCluster.LocalNode) => Effect.map(adminQuery<{ Log_name: string }>(n, "SHOW BINARY LOGS"), (r) => r.map((x) => x.Log_name))
      const first = yield* Effect.forEach(c.nodes, files)
      // Rotation (not written to the binlog) is when MariaDB purges: rotate until the files
      // there were at the start are gone, on every node.
      yield* LocalCluster.waitFor("every node to purge its old binlog files", Effect.gen(function*() {
        yield* Effect.forEach(c.nodes, (n) => adminQuery(n, "FLUSH NO_WRITE_TO_BINLOG BINARY LOGS"))
        const now = yield* Effect.forEach(c.nodes, files)
        return now.every((names, i) => first[i]!.every((f) => !names.includes(f)))
      }), 20_000)
      yield* run(conn, `INSERT INTO ${TABLE} VALUES (2, 2)`)
      yield* expectConsistent(c, [1, 2])
      // The master's mariadbd dies: a replica whose old binlogs are gone takes over and captures.
      process.kill(mariadbPid(master), "SIGKILL")
      const next = yield* waitForMaster(c, "a new master", master.nodeId, 30_000)
      const conn2 = yield* connect(next.rwPort!)
      yield* run(conn2, `INSERT INTO ${TABLE} VALUES (3, 3)`)
      yield* expectConsistent(c, [1, 2, 3])
    }), 120_000)

  it.live("a write straight to a replica's MariaDB never reaches the log: that node is diverged, the others carry on", () =>
    Effect.gen(function*() {
      const { c, master } = yield* cluster({ rebuildAuto: false })
      const conn = yield* connect(master.rwPort!)
      yield* run(conn, `INSERT INTO ${TABLE} VALUES (1, 1)`)
      yield* waitConverged(c)
      const replica = c.nodes.find((n) => n !== master)!
      // Root bypasses read_only; the proxy never sends anyone here.
      yield* adminQuery(replica, `INSERT INTO ${TABLE} VALUES (999, 999)`)
      yield* LocalCluster.waitFor("the replica to report itself diverged", Effect.map(statusOf(replica), (s) =>
        !("error" in s) && s.database?.diverged !== null && s.database?.diverged !== undefined), 20_000)
      // The others never see the row, and keep committing.
      yield* run(conn, `INSERT INTO ${TABLE} VALUES (2, 2)`)
      const healthy = c.nodes.filter((n) => n !== replica)
      yield* LocalCluster.waitFor("the healthy replica to catch up", Effect.map(statuses(c), (ss) =>
        ss.every((s) => "error" in s || s.nodeId === replica.nodeId || s.database?.role === "master" || s.database?.lag === 0)), 20_000)
      for (const n of healthy) {
        const ids = yield* idsOn(n, TABLE)
        expect([...ids].sort((a, b) => a - b)).toEqual([1, 2])
      }
      // A diverged node's RO port does not serve from its own database.
      const s = yield* statusOf(replica)
      if (!("error" in s) && s.proxy?.routes.ro.startsWith("local")) console.error(replica.output().split("\n").filter((l) => /ERROR|routes|role/.test(l)).join("\n"))
      if (!("error" in s)) expect([s.database?.role, s.proxy?.routes.ro]).not.toEqual([s.database?.role, expect.stringMatching(/^local/)])
      // Nor does any other node send its RO clients there.
      const divergedRo = `forward ${replica.host}:${replica.forwardRoPort}`
      yield* LocalCluster.waitFor("the other nodes to stop routing RO to the diverged node", Effect.map(statuses(c), (ss) =>
        ss.every((x) => "error" in x || x.nodeId === replica.nodeId || x.proxy?.routes.ro !== divergedRo)), 10_000)
      const ro = yield* connect(replica.roPort!)
      const [row] = yield* run<{ n: number }>(ro, `SELECT COUNT(*) AS n FROM ${TABLE} WHERE id = 999`)
      expect(Number(row!.n)).toBe(0)
    }), 120_000)
})
