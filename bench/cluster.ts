/**
 * Cluster benchmark: sysbench oltp_write_only (4 tables x 10000 rows, 8 threads) against
 * (a) one lone mariadbd, (b) native lossless semi-sync (a master waiting AFTER_SYNC for
 * one ACK of two replicas) and (c) a 3-node cluster through the master node's RW port.
 * The three run one after another, each torn down before the next (a 2-core machine).
 * Prints one JSON line:
 * {"bench":"cluster","aloneTps":N,"semisyncTps":N,"clusterTps":N,"vsSemisync":N,
 *  "vsAlone":N,"clusterP95Ms":N,"agentRssMb":N}. Env: BENCH_SECONDS (default 20).
 */
import { NodeRuntime } from "@effect/platform-node"
import { Effect } from "effect"
import { readFileSync } from "node:fs"
import * as LocalCluster from "../src/services/LocalCluster.js"
import { APP_PASSWORD, APP_USER, connect, createAppUser, run as sql, waitForMaster } from "../test/support/dbCluster.js"
import { MariaDbInstance, type MariaDbInstanceInfo } from "../test/support/MariaDbInstance.js"
import { createReplicationUser, replicaConfig, semiSyncMasterConfig, startReplication, waitForReplica } from "../test/support/replication.js"
import { sysbench as runSysbench } from "./support/sysbench.js"

const seconds = Number(process.env.BENCH_SECONDS ?? 20)

// Every target gets the same user, so the sysbench command lines differ only in the port.
const sysbench = (port: number, threads: number, extra: ReadonlyArray<string>) =>
  runSysbench({ test: "oltp_write_only", port, user: APP_USER, password: APP_PASSWORD, threads, extra })

/** Prepares the tables, then one timed run: transactions per second and p95 latency (ms). */
const measure = (name: string, port: number) =>
  Effect.gen(function*() {
    yield* sysbench(port, 4, ["prepare"])
    const out = yield* sysbench(port, 8, [`--time=${seconds}`, "--percentile=95", "--report-interval=0", "run"])
    const tps = Number(/transactions:\s+\d+\s+\(([\d.]+) per sec/.exec(out)?.[1] ?? NaN)
    const p95 = Number(/95th percentile:\s+([\d.]+)/.exec(out)?.[1] ?? NaN)
    const errors = /ignored errors:\s+(\d+)/.exec(out)?.[1] ?? "?"
    process.stderr.write(`${name}: ${tps} tps, p95 ${p95} ms, ignored errors ${errors}\n`)
    return { tps, p95 }
  })

/** The sysbench user and database on a plain mariadbd (over its socket, as root). */
const setupSbtest = (db: MariaDbInstanceInfo) =>
  Effect.gen(function*() {
    yield* db.query("CREATE DATABASE sbtest")
    yield* db.query(`CREATE USER '${APP_USER}'@'%' IDENTIFIED BY '${APP_PASSWORD}'`)
    yield* db.query(`GRANT ALL ON sbtest.* TO '${APP_USER}'@'%'`)
  })

const alone = Effect.gen(function*() {
  const db = yield* MariaDbInstance.make({ serverId: 1 })
  yield* setupSbtest(db)
  return yield* measure("alone", db.port)
})

const semisync = Effect.gen(function*() {
  const master = yield* MariaDbInstance.make({ serverId: 11, extraConfig: semiSyncMasterConfig })
  const replicas = [
    yield* MariaDbInstance.make({ serverId: 12, extraConfig: { ...replicaConfig, rpl_semi_sync_slave_enabled: "ON" } }),
    yield* MariaDbInstance.make({ serverId: 13, extraConfig: { ...replicaConfig, rpl_semi_sync_slave_enabled: "ON" } })
  ]
  yield* createReplicationUser(master)
  for (const r of replicas) yield* startReplication(r, master)
  // Both replicas ACK before any binlogged setup (the master never falls back to async).
  yield* waitForReplica(
    master,
    "both semi-sync replicas to connect",
    Effect.map(master.query<{ Value: string }>("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_clients'"), (r) => Number(r[0]?.Value) === 2),
    30_000
  )
  yield* setupSbtest(master)
  return yield* measure("semisync", master.port)
})

const cluster = Effect.gen(function*() {
  const c = yield* LocalCluster.make({ nodes: 3, database: true })
  const master = yield* waitForMaster(c, "a first master")
  yield* createAppUser(master)
  // Everything sysbench sees goes through the RW port, the database too.
  yield* Effect.scoped(Effect.flatMap(connect(master.rwPort!), (conn) => sql(conn, "CREATE DATABASE sbtest")))
  const r = yield* measure("cluster", master.rwPort!)
  const vmRss = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${master.pid()}/status`, "utf8"))?.[1]
  // The run must not have moved the master: the figure would not be one steady cluster's.
  const after = yield* waitForMaster(c, "the master after the run")
  if (after.nodeId !== master.nodeId) process.stderr.write(`warning: master moved from node ${master.nodeId} to ${after.nodeId} during the run\n`)
  return { ...r, rssMb: Number(vmRss) / 1024 }
})

const program = Effect.gen(function*() {
  const a = yield* Effect.scoped(alone)
  const s = yield* Effect.scoped(semisync)
  const c = yield* Effect.scoped(cluster)
  const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d
  console.log(JSON.stringify({
    bench: "cluster",
    aloneTps: round(a.tps, 1),
    semisyncTps: round(s.tps, 1),
    clusterTps: round(c.tps, 1),
    vsSemisync: round(c.tps / s.tps, 3),
    vsAlone: round(c.tps / a.tps, 3),
    clusterP95Ms: c.p95,
    agentRssMb: round(c.rssMb, 1)
  }))
})

NodeRuntime.runMain(program)
