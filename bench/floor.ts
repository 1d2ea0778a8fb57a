/**
 * Commit-latency floor benchmark: how fast can one connection commit on this machine with
 * a transaction durable on a second process before the ACK, by the leanest design there
 * is, against this cluster? Three setups, one after another (each torn down first):
 * (a) one lone mariadbd; (b) the floor: a semi-sync master whose only semi-sync replica
 * (bench/support/floorReplica.ts, "acker", this project's BinlogCapture) sends each
 * transaction to a "follower" process that writes it O_DSYNC and answers, and two native
 * async replicas applying everything as the cluster's replicas do; no log, no consensus,
 * no state machine; (c) a 3-node cluster. Each is measured through a relay (haproxy for
 * (a) and (b), the RW port for (c)) and on MariaDB's own port, in alternating rounds of one
 * connection doing autocommit single-row INSERTs; figures are the median of the rounds'
 * p50s. CPU per commit: the whole machine's busy time over the relayed rounds (for the
 * cluster also its agents' and its mariadbds' own).
 * Prints one JSON line:
 * {"bench":"floor","aloneCommitP50Ms":N,"floorCommitP50Ms":N,"clusterCommitP50Ms":N,
 *  "clusterVsFloor":N,"aloneDirectP50Ms":N,"floorDirectP50Ms":N,"clusterDirectP50Ms":N,
 *  "aloneCpuUsPerCommit":N,"floorCpuUsPerCommit":N,"clusterCpuUsPerCommit":N,
 *  "clusterAgentsCpuUsPerCommit":N,"clusterMariadbCpuUsPerCommit":N}
 * Env: BENCH_ROUNDS (default 5), BENCH_ROUND_SECONDS (default 2).
 */
import { NodeRuntime } from "@effect/platform-node"
import { Effect } from "effect"
import { spawn } from "node:child_process"
import { readFileSync } from "node:fs"
import * as LocalCluster from "../src/testing/LocalCluster.js"
import { APP_PASSWORD, APP_USER, connect, createAppUser, run as sql, waitForMaster } from "../test/support/dbCluster.js"
import { MariaDbInstance } from "../test/support/MariaDbInstance.js"
import { createReplicationUser, replicaConfig, semiSyncMasterConfig, startReplication, waitForSemiSyncClients } from "../test/support/replication.js"
import { createAppDatabase } from "./support/appDatabase.js"
import { commitProbe } from "./support/commitProbe.js"
import { haproxy } from "./support/haproxy.js"
import { cpuSampler, machineCpuSampler } from "./support/proc.js"

const rounds = Number(process.env.BENCH_ROUNDS ?? 5)
const roundSeconds = Number(process.env.BENCH_ROUND_SECONDS ?? 2)

const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!
const round2 = (x: number) => Math.round(x * 100) / 100

/**
 * Alternating rounds through the relay and on MariaDB's own port. Over the relayed rounds:
 * the machine's busy CPU per commit, and `pids`' own (each) per commit.
 */
const probe = (name: string, relayPort: number, directPort: number, pids: ReadonlyArray<number> = []) =>
  Effect.gen(function*() {
    const relayed: Array<number> = []
    const direct: Array<number> = []
    const machineUs: Array<number> = []
    const pidsUs: Array<ReadonlyArray<number>> = []
    for (let i = 0; i < rounds; i++) {
      const machine = machineCpuSampler()
      const own = cpuSampler(pids)
      const r = yield* commitProbe({ port: relayPort, user: APP_USER, password: APP_PASSWORD, seconds: roundSeconds })
      const used = own()
      machineUs.push(machine().busyUs / r.commits)
      pidsUs.push(used.usedUs.map((u) => u / r.commits))
      relayed.push(r.p50Ms)
      direct.push((yield* commitProbe({ port: directPort, user: APP_USER, password: APP_PASSWORD, seconds: roundSeconds })).p50Ms)
    }
    process.stderr.write(`${name}: relayed p50s ${relayed.map((x) => x.toFixed(2)).join(" ")}; direct ${direct.map((x) => x.toFixed(2)).join(" ")}; machine CPU ${median(machineUs).toFixed(0)} us per commit\n`)
    return { relayed: median(relayed), direct: median(direct), cpuUs: median(machineUs), pidsUs: pids.map((_, i) => median(pidsUs.map((p) => p[i]!))) }
  })

const alone = Effect.gen(function*() {
  const db = yield* MariaDbInstance.make({ serverId: 1 })
  yield* createAppDatabase(db, "sbtest")
  return yield* probe("alone", yield* haproxy(db.port), db.port)
})

/** One of floorReplica.js's processes, stopped with the scope; ready once it says so. */
const floorProcess = (args: ReadonlyArray<string>) =>
  Effect.acquireRelease(
    Effect.callback<ReturnType<typeof spawn>, Error>((resume) => {
      const child = spawn(process.execPath, [new URL("./support/floorReplica.js", import.meta.url).pathname, ...args], { stdio: ["ignore", "pipe", "inherit"] })
      child.once("error", (e) => resume(Effect.fail(e)))
      child.once("exit", (code) => resume(Effect.fail(new Error(`floorReplica ${args[0]} exited (${code})`))))
      child.stdout!.once("data", () => resume(Effect.succeed(child)))
    }).pipe(Effect.timeout("30 seconds")),
    (child) => Effect.sync(() => void child.kill("SIGTERM"))
  )

const floor = Effect.gen(function*() {
  const master = yield* MariaDbInstance.make({ serverId: 11, extraConfig: semiSyncMasterConfig })
  const replicas = [
    yield* MariaDbInstance.make({ serverId: 12, extraConfig: replicaConfig }),
    yield* MariaDbInstance.make({ serverId: 13, extraConfig: replicaConfig })
  ]
  yield* createReplicationUser(master)
  for (const r of replicas) yield* startReplication(r, master)
  const followerPort = yield* LocalCluster.freePort()
  yield* floorProcess(["follower", String(followerPort)])
  yield* floorProcess(["acker", String(master.port), String(followerPort)])
  yield* waitForSemiSyncClients(master, 1, "the floor's acker to connect as semi-sync replica")
  yield* createAppDatabase(master, "sbtest")
  return yield* probe("floor", yield* haproxy(master.port), master.port)
})

const cluster = Effect.gen(function*() {
  const c = yield* LocalCluster.make({ nodes: 3, database: true })
  const master = yield* waitForMaster(c, "a first master")
  yield* createAppUser(master)
  yield* Effect.scoped(Effect.flatMap(connect(master.rwPort!), (conn) => sql(conn, "CREATE DATABASE sbtest")))
  const agents = c.nodes.map((n) => n.pid()!)
  const servers = c.nodes.map((n) => Number(readFileSync(n.mariadb!.pidFile, "utf8").trim()))
  const r = yield* probe("cluster", master.rwPort!, master.mariadb!.port, [...agents, ...servers])
  const sum = (xs: ReadonlyArray<number>) => xs.reduce((a, b) => a + b, 0)
  return { ...r, agentsUs: sum(r.pidsUs.slice(0, 3)), mariadbUs: sum(r.pidsUs.slice(3)) }
})

const program = Effect.gen(function*() {
  const a = yield* Effect.scoped(alone)
  const f = yield* Effect.scoped(floor)
  const c = yield* Effect.scoped(cluster)
  console.log(JSON.stringify({
    bench: "floor",
    aloneCommitP50Ms: round2(a.relayed),
    floorCommitP50Ms: round2(f.relayed),
    clusterCommitP50Ms: round2(c.relayed),
    clusterVsFloor: round2(c.relayed / f.relayed),
    aloneDirectP50Ms: round2(a.direct),
    floorDirectP50Ms: round2(f.direct),
    clusterDirectP50Ms: round2(c.direct),
    aloneCpuUsPerCommit: Math.round(a.cpuUs),
    floorCpuUsPerCommit: Math.round(f.cpuUs),
    clusterCpuUsPerCommit: Math.round(c.cpuUs),
    clusterAgentsCpuUsPerCommit: Math.round(c.agentsUs),
    clusterMariadbCpuUsPerCommit: Math.round(c.mariadbUs)
  }))
})

NodeRuntime.runMain(program, { disableErrorReporting: false })
