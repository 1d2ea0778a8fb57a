/**
 * Bounded storage with real agents and mariadbd: the Paxos log, the cluster-state index and
 * MariaDB's own binlog stay near the retained tail however much is written, and the
 * cluster keeps replicating, restarting and failing over on what is left.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Schedule } from "effect"
import * as LocalCluster from "../src/testing/LocalCluster.js"
import { readFileSync, rmSync } from "node:fs"
import { join } from "node:path"
import { adminQuery, checksum, connect, createAppUser, mariadbPid, run, statusOf, waitConverged, waitForMaster } from "./support/dbCluster.js"

const dataDirOf = (n: LocalCluster.LocalNode) => (JSON.parse(readFileSync(n.configPath, "utf8")) as { dataDir: string }).dataDir

const MiB = 1024 * 1024
const TABLE = "d.blobs"
/** A 2 MiB tail in 1 MiB segments: a few MiB written is several times the tail. */
const LOG = { retainMb: 2, segmentMb: 1 } as const

const binlogBytes = (n: LocalCluster.LocalNode) =>
  Effect.map(adminQuery<{ File_size: number | string }>(n, "SHOW BINARY LOGS"), (rows) => rows.reduce((s, r) => s + Number(r.File_size), 0))

/**
 * Every node holds the same table: compared until they agree (bounded). A replica's lag is
 * from its last check, so the last rows may still be on their way; a real divergence stays.
 */
const expectSameTables = (c: LocalCluster.LocalCluster) =>
  Effect.gen(function*() {
    let sums: ReadonlyArray<string> = []
    yield* LocalCluster.waitFor("every node to hold the same table", Effect.map(
      Effect.forEach(c.nodes, (n) => checksum(n, TABLE)),
      (s) => new Set(sums = s).size === 1
    ), 20_000).pipe(Effect.ignore)
    expect(new Set(sums).size, `checksums ${sums.join(", ")}`).toBe(1)
  })

/**
 * Writes `rows` rows of 64 KiB, one autocommit statement each, from `from` on, through
 * `port`. A master change meanwhile (a lease lapsing on a loaded machine) closes the
 * connection: the row is written again on a new one (REPLACE: it may have committed), for
 * at most 60 s.
 */
const writeRows = (port: number, from: number, rows: number) =>
  Effect.gen(function*() {
    for (let i = from; i < from + rows; i++) {
      yield* Effect.scoped(Effect.flatMap(connect(port), (conn) => run(conn, `REPLACE INTO ${TABLE} VALUES (?, REPEAT(?, 65536))`, [i, String.fromCharCode(97 + (i % 26))]))).pipe(
        Effect.tapError((e) => Effect.logWarning(`row ${i}: ${e.message}; written again`)),
        Effect.retry({ schedule: Schedule.spaced("200 millis"), times: 300 })
      )
    }
  })

describe("log compaction", () => {
  it.live("the log, its index and every MariaDB binlog stay bounded by the retained tail; restarts and failover still work", () =>
    Effect.gen(function*() {
      const c = yield* LocalCluster.make({ nodes: 3, database: true, log: LOG, ...(process.env.KEEP_DIR ? { dir: process.env.KEEP_DIR } : {}) })
      const master = yield* waitForMaster(c, "a first master")
      yield* createAppUser(master)
      yield* adminQuery(master, "CREATE DATABASE IF NOT EXISTS d")
      yield* adminQuery(master, `CREATE TABLE ${TABLE} (id INT PRIMARY KEY, b LONGBLOB)`)
      // 16 MiB of row images: eight times the tail.
      yield* writeRows(master.rwPort!, 1, 256)
      yield* waitConverged(c, 60_000)
      // Every node compacts (all live members applied everything) down to about the tail.
      const bound = (LOG.retainMb + 3 * LOG.segmentMb) * MiB
      yield* LocalCluster.waitFor("every node's log to be compacted to the tail", Effect.gen(function*() {
        const ss = yield* Effect.forEach(c.nodes, statusOf)
        return ss.every((s) => !("error" in s) && (s.paxos.compactedBelow ?? 0) > 0 && (s.paxos.logBytes ?? Infinity) <= bound)
      }), 30_000)
      yield* LocalCluster.waitFor("every MariaDB binlog to be purged to the tail", Effect.gen(function*() {
        const sizes = yield* Effect.forEach(c.nodes, binlogBytes)
        return sizes.every((b) => b <= (LOG.retainMb + 2) * MiB)
      }), 30_000)

      // A replica restarts: its database is within the tail, so it catches up from the log.
      const replica = c.nodes.find((n) => n !== master)!
      yield* replica.kill("SIGKILL")
      yield* writeRows(master.rwPort!, 1000, 8)
      yield* replica.start
      yield* writeRows(master.rwPort!, 2000, 8)
      yield* waitConverged(c, 60_000)
      yield* expectSameTables(c)

      // The master's agent dies: another takes over on the compacted log.
      yield* master.kill("SIGKILL")
      const next = yield* waitForMaster(c, "a new master", master.nodeId, 30_000)
      yield* writeRows(next.rwPort!, 3000, 4)
      yield* master.start
      yield* waitConverged(c, 60_000)
      yield* expectSameTables(c)
      const [row] = yield* adminQuery<{ n: number }>(master, `SELECT COUNT(*) AS n FROM ${TABLE}`)
      expect(Number(row!.n)).toBe(256 + 8 + 8 + 4)

      // A node's MariaDB datadir is deleted while it is stopped: the log no longer starts at
      // the first transaction, so it comes back by a copy from a peer.
      const wiped = c.nodes.find((n) => n.nodeId !== next.nodeId)!
      yield* wiped.kill("SIGKILL")
      yield* Effect.sync(() => rmSync(join(dataDirOf(wiped), "mariadb"), { recursive: true, force: true }))
      yield* wiped.start
      yield* LocalCluster.waitFor("the wiped node to be rebuilt from a peer's copy", Effect.sync(() => /rebuild: copied \d+ MB from node/.test(wiped.output())), 60_000)
      yield* writeRows(next.rwPort!, 4000, 2)
      yield* waitConverged(c, 60_000)
      yield* expectSameTables(c)
    }), 240_000)

  it.live("a replica stopped (SIGSTOP) for longer than the retention under write load is rebuilt from a peer's copy, with its state, and catches up", () =>
    Effect.gen(function*() {
      const c = yield* LocalCluster.make({ nodes: 3, database: true, log: LOG, ...(process.env.KEEP_DIR ? { dir: process.env.KEEP_DIR } : {}) })
      const master = yield* waitForMaster(c, "a first master")
      yield* createAppUser(master)
      yield* adminQuery(master, "CREATE DATABASE IF NOT EXISTS d")
      yield* adminQuery(master, `CREATE TABLE ${TABLE} (id INT PRIMARY KEY, b LONGBLOB)`)
      yield* writeRows(master.rwPort!, 1, 8)
      yield* waitConverged(c, 60_000)
      const replica = c.nodes.find((n) => n !== master)!
      const before = yield* statusOf(replica)
      const stoppedAt = "error" in before ? 0 : before.paxos.chosenUpTo
      // Agent and server frozen: its peers stop hearing it and compact past it.
      const pids = [replica.pid()!, mariadbPid(replica)]
      for (const pid of pids) process.kill(pid, "SIGSTOP")
      yield* Effect.gen(function*() {
        const others = c.nodes.filter((n) => n !== replica)
        let id = 100
        // Past the retained tail, and past what the peers' connections to it hold: 64 MiB
        // queued in the sender, and the kernel's socket buffers (here up to 4 MiB sent and 32
        // MiB received, tcp_wmem and tcp_rmem). With 96 MiB of rows the stopped replica
        // sometimes had it all waiting in those buffers and came back without a copy (2 runs
        // in 15); 192 MiB leaves the messages it missed gone: only a copy can bring it back.
        yield* LocalCluster.waitFor("the others to compact past the stopped replica", Effect.gen(function*() {
          yield* writeRows(master.rwPort!, id, 16)
          id += 16
          const ss = yield* Effect.forEach(others, statusOf)
          return id > 100 + 3072 && ss.every((s) => !("error" in s) && (s.paxos.compactedBelow ?? 0) > stoppedAt)
        }), 180_000)
      }).pipe(Effect.ensuring(Effect.sync(() => {
        for (const pid of pids) process.kill(pid, "SIGCONT")
      })))
      yield* LocalCluster.waitFor("the replica to find itself behind and be rebuilt from a copy", Effect.sync(() =>
        replica.output().includes("behind the retained log") && /installed node \d+'s state/.test(replica.output()) &&
        /rebuild: copied \d+ MB from node/.test(replica.output())), 90_000)
      yield* writeRows(master.rwPort!, 100_000, 2)
      yield* waitConverged(c, 60_000)
      yield* expectSameTables(c)
    }), 400_000)
})
