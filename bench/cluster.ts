/**
 * Cluster benchmark: sysbench oltp_write_only (4 tables x 10000 rows, 8 threads) against
 * (a) one lone mariadbd, (b) native lossless semi-sync (a master waiting AFTER_SYNC for
 * one ACK of two replicas) and (c) a 3-node cluster through the master node's RW port;
 * before that, on each, one connection doing autocommit single-row INSERTs (commit latency).
 * The three run one after another, each torn down before the next (a 2-core machine).
 * Prints one JSON line:
 * {"bench":"cluster","aloneTps":N,"semisyncTps":N,"clusterTps":N,"vsSemisync":N,
 *  "vsAlone":N,"clusterP95Ms":N,"agentRssMb":N,"aloneCommitP50Ms":N,"semisyncCommitP50Ms":N,
 *  "clusterCommitP50Ms":N,"idleCpuPct":N,"agentCpuUsPerTxn":N,"mariadbDurability":S}
 * idleCpuPct: the busiest agent's CPU (percent of one core) over 10 s idle after setup;
 * agentCpuUsPerTxn: the busiest agent's CPU microseconds per transaction of the 8-thread run;
 * agentRssMb: the master agent's RSS after the run; mariadbDurability: the cluster's MariaDB
 * sync_binlog / innodb_flush_log_at_trx_commit ("full" when both are 1).
 * Also, to tell a run bound by the machine's CPU: {alone,semisync,cluster}MachineCpuPct, the
 * busy share of all cores during each 8-thread run (100 = every core busy), and
 * {semisync,cluster}CpuUsPerTxn, the machine's busy CPU microseconds (every process) per
 * transaction of that run. The machine's ceiling for the cluster: agentsCpuUsPerTxn (the
 * three agents' CPU per transaction), and agentFreeVsSemisync / agentFreeVsAlone, what the
 * cluster run would reach if its agents cost nothing (its CPU per transaction less theirs,
 * at the same busy share of the cores; the kernel's work for the agents' sockets and log
 * writes stays in, so this bounds the agents' own code, not the design); and
 * semisyncViaHaproxyTps / relayCeilingVsSemisync, the semi-sync servers' run again through
 * haproxy in TCP mode: what putting any relay (the RW port) in front of them costs here.
 * Env: BENCH_SECONDS (sysbench run, default 20), BENCH_COMMIT_SECONDS (default 10),
 * BENCH_IDLE_SECONDS (default 10), BENCH_ONLY=cluster (skip the two baselines),
 * BENCH_AGENT_NODE_ARGS (extra node arguments for the agents, e.g. "--cpu-prof --cpu-prof-dir=DIR"),
 * BENCH_PEER_TLS=1 (mutual TLS between the agents, as the demo runs), BENCH_EXTRA_CONFIG (JSON:
 * mariadb.extraConfig for the cluster's servers), BENCH_PAXOS_TUNING (JSON: the nodes' paxos settings,
 * e.g. {"maxInflight":2}).
 */
import { NodeRuntime } from "@effect/platform-node"
import { Effect } from "effect"
import * as LocalCluster from "../src/testing/LocalCluster.js"
import { adminQuery, APP_PASSWORD, APP_USER, connect, createAppUser, run as sql, statusOf, waitForMaster } from "../test/support/dbCluster.js"
import { MariaDbInstance } from "../test/support/MariaDbInstance.js"
import { createReplicationUser, replicaConfig, semiSyncMasterConfig, startReplication, waitForSemiSyncClients } from "../test/support/replication.js"
import { createAppDatabase } from "./support/appDatabase.js"
import { commitProbe } from "./support/commitProbe.js"
import { cpuSampler, machineCpuSampler, rssMb } from "./support/proc.js"
import { haproxy } from "./support/haproxy.js"
import { sysbench as runSysbench } from "./support/sysbench.js"

const seconds = Number(process.env.BENCH_SECONDS ?? 20)
const commitSeconds = Number(process.env.BENCH_COMMIT_SECONDS ?? 10)
const idleSeconds = Number(process.env.BENCH_IDLE_SECONDS ?? 10)
const only = process.env.BENCH_ONLY

// Every target gets the same user, so the sysbench command lines differ only in the port.
const sysbench = (port: number, threads: number, extra: ReadonlyArray<string>) =>
  runSysbench({ test: "oltp_write_only", port, user: APP_USER, password: APP_PASSWORD, threads, extra })

/** One timed 8-thread sysbench run on prepared tables: transactions per second, p95 latency (ms), the machine's CPU. */
const load = (name: string, port: number) =>
  Effect.gen(function*() {
    const machine = machineCpuSampler()
    const out = yield* sysbench(port, 8, [`--time=${seconds}`, "--percentile=95", "--report-interval=0", "run"])
    const machineCpu = machine()
    const tps = Number(/transactions:\s+\d+\s+\(([\d.]+) per sec/.exec(out)?.[1] ?? NaN)
    const txns = Number(/transactions:\s+(\d+)/.exec(out)?.[1] ?? NaN)
    const p95 = Number(/95th percentile:\s+([\d.]+)/.exec(out)?.[1] ?? NaN)
    const errors = /ignored errors:\s+(\d+)/.exec(out)?.[1] ?? "?"
    const cpuUsPerTxn = machineCpu.busyUs / txns
    process.stderr.write(
      `${name}: ${tps} tps, p95 ${p95} ms, ignored errors ${errors}; machine CPU ${machineCpu.pct.toFixed(1)}% busy, ${cpuUsPerTxn.toFixed(0)} us per txn\n`
    )
    return { tps, txns, p95, machineCpuPct: machineCpu.pct, cpuUsPerTxn }
  })

/**
 * Commit latency first (one connection), then the tables and one timed sysbench run, with
 * what `during` measured over the run.
 */
const measure = <A>(name: string, port: number, during: () => () => A, report: Effect.Effect<void> = Effect.void) =>
  Effect.gen(function*() {
    const probe = yield* commitProbe({ port, user: APP_USER, password: APP_PASSWORD, seconds: commitSeconds })
    process.stderr.write(`${name}: one connection, ${probe.commits} commits, p50 ${probe.p50Ms.toFixed(2)} ms, p99 ${probe.p99Ms.toFixed(2)} ms\n`)
    yield* report
    yield* sysbench(port, 4, ["prepare"])
    const stop = during()
    const r = yield* load(name, port)
    const measured = stop()
    yield* report
    return { ...r, commitP50Ms: probe.p50Ms, measured }
  })

const nothing = () => () => undefined

const alone = Effect.gen(function*() {
  const db = yield* MariaDbInstance.make({ serverId: 1 })
  yield* createAppDatabase(db, "sbtest")
  return yield* measure("alone", db.port, nothing)
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
  yield* waitForSemiSyncClients(master, 2, "both semi-sync replicas to connect")
  yield* createAppDatabase(master, "sbtest")
  const direct = yield* measure("semisync", master.port, nothing)
  // The same servers behind a relay in C (haproxy, TCP mode): what a relay alone costs
  // this machine, with no replication work of its own.
  const relayed = yield* load("semisync via haproxy", yield* haproxy(master.port))
  return { ...direct, relayedTps: relayed.tps }
})

const cluster = Effect.gen(function*() {
  const nodeArgs = process.env.BENCH_AGENT_NODE_ARGS?.split(" ").filter((a) => a !== "")
  const c = yield* LocalCluster.make({
    nodes: 3,
    database: process.env.BENCH_EXTRA_CONFIG !== undefined ? { extraConfig: JSON.parse(process.env.BENCH_EXTRA_CONFIG) } : true,
    tls: process.env.BENCH_PEER_TLS === "1",
    ...(process.env.BENCH_PAXOS_TUNING !== undefined ? { paxos: JSON.parse(process.env.BENCH_PAXOS_TUNING) } : {}),
    ...(nodeArgs !== undefined ? { nodeArgs } : {})
  })
  const master = yield* waitForMaster(c, "a first master")
  yield* createAppUser(master)
  // Everything sysbench sees goes through the RW port, the database too.
  yield* Effect.scoped(Effect.flatMap(connect(master.rwPort!), (conn) => sql(conn, "CREATE DATABASE sbtest")))
  const agents = c.nodes.map((n) => n.pid()!)
  const idle = cpuSampler(agents)
  yield* Effect.sleep(`${idleSeconds} seconds`)
  const idleCpu = idle()
  process.stderr.write(`cluster: idle agents' CPU ${idleCpu.pct.map((p) => `${p.toFixed(2)}%`).join(", ")}\n`)
  const [durability] = yield* adminQuery<{ sb: unknown; fl: unknown }>(master, "SELECT @@sync_binlog AS sb, @@innodb_flush_log_at_trx_commit AS fl")
  // Where the master's commits spent their time (cumulative), from its /status.
  const report = Effect.flatMap(statusOf(master), (s) =>
    Effect.sync(() => {
      if ("error" in s || s.commitPath === undefined) return
      const stages = Object.entries(s.commitPath.stages).map(([k, v]) => `${k} p50 ${v.p50Ms} p99 ${v.p99Ms}`).join(", ")
      process.stderr.write(`cluster: commit path (ms): ${stages}; ${s.commitPath.txnsPerEntry} txns/entry\n`)
    }))
  const r = yield* measure("cluster", master.rwPort!, () => cpuSampler(agents), report)
  const rss = rssMb(master.pid()!)
  const memory = yield* Effect.map(statusOf(master), (s) => ("error" in s ? undefined : s.memory))
  process.stderr.write(`cluster: master agent's memory after the run (MB) ${JSON.stringify(memory)}\n`)
  process.stderr.write(`cluster: agents' CPU during the run ${r.measured.pct.map((p) => `${p.toFixed(1)}%`).join(", ")}\n`)
  // The run must not have moved the master: the figure would not be one steady cluster's.
  const after = yield* waitForMaster(c, "the master after the run")
  if (after.nodeId !== master.nodeId) process.stderr.write(`warning: master moved from node ${master.nodeId} to ${after.nodeId} during the run\n`)
  const sb = Number(durability?.sb)
  const fl = Number(durability?.fl)
  // The measured ceiling of this machine: the same run's CPU without the agents' share
  // (MariaDB x3, sysbench, kernel), at the same busy share of the cores.
  const agentsUsPerTxn = r.measured.usedUs.reduce((a, b) => a + b, 0) / r.txns
  const agentFreeTps = (r.tps * r.cpuUsPerTxn) / (r.cpuUsPerTxn - agentsUsPerTxn)
  process.stderr.write(
    `cluster: the agents used ${agentsUsPerTxn.toFixed(0)} us per txn of ${r.cpuUsPerTxn.toFixed(0)}; without them the same machine would run ${agentFreeTps.toFixed(0)} tps\n`
  )
  return {
    ...r,
    agentsUsPerTxn,
    agentFreeTps,
    rssMb: rss,
    idleCpuPct: Math.max(...idleCpu.pct),
    agentCpuUsPerTxn: Math.max(...r.measured.usedUs) / r.txns,
    mariadbDurability: sb === 1 && fl === 1 ? "full" : `relaxed(sync_binlog=${sb},innodb_flush_log_at_trx_commit=${fl})`
  }
})

const skipped = { tps: NaN, txns: NaN, p95: NaN, commitP50Ms: NaN, measured: undefined, machineCpuPct: NaN, cpuUsPerTxn: NaN, relayedTps: NaN }

const program = Effect.gen(function*() {
  const a = only === "cluster" ? skipped : yield* Effect.scoped(alone)
  const s = only === "cluster" ? skipped : yield* Effect.scoped(semisync)
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
    agentRssMb: round(c.rssMb, 1),
    aloneCommitP50Ms: round(a.commitP50Ms),
    semisyncCommitP50Ms: round(s.commitP50Ms),
    clusterCommitP50Ms: round(c.commitP50Ms),
    idleCpuPct: round(c.idleCpuPct),
    agentCpuUsPerTxn: Math.round(c.agentCpuUsPerTxn),
    mariadbDurability: c.mariadbDurability,
    aloneMachineCpuPct: round(a.machineCpuPct, 1),
    semisyncMachineCpuPct: round(s.machineCpuPct, 1),
    clusterMachineCpuPct: round(c.machineCpuPct, 1),
    semisyncCpuUsPerTxn: Math.round(s.cpuUsPerTxn),
    clusterCpuUsPerTxn: Math.round(c.cpuUsPerTxn),
    agentsCpuUsPerTxn: Math.round(c.agentsUsPerTxn),
    agentFreeVsSemisync: round(c.agentFreeTps / s.tps, 3),
    agentFreeVsAlone: round(c.agentFreeTps / a.tps, 3),
    semisyncViaHaproxyTps: round(s.relayedTps, 1),
    relayCeilingVsSemisync: round(s.relayedTps / s.tps, 3)
  }))
})

NodeRuntime.runMain(program)
