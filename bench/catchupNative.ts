/**
 * The native baseline of bench:catchup: the same load (4 connections committing 1 MiB rows)
 * on a lossless semi-sync master with two semi-sync replicas applying as the cluster's do
 * (4 parallel threads, optimistic); one replica receives nothing for 30 s (its IO thread
 * stopped), then resumes while the load goes on. MariaDB's own replication, with no agent:
 * how fast a replica of this machine catches up at all. Prints one JSON line:
 * {"bench":"catchup-native","pausedS":30,"lagBytesAtResume":N,"catchupMs":N,"writeTpsDuring":N,"writeTpsBefore":N}
 * lagBytesAtResume: binlog bytes the master wrote while the replica received nothing;
 * catchupMs: from the resume until the replica's GTID is at most the number of writers
 * behind the master's (as bench:catchup). Without agents the master commits several times
 * faster than the cluster, so the load is held to BENCH_WRITE_TPS (default 15, about what
 * the cluster's RW port takes on this machine): the same lag to catch up, and the same
 * load meanwhile. Env: BENCH_PAUSE_SECONDS (30), BENCH_BEFORE_SECONDS (15), BENCH_ROW_BYTES
 * (1 MiB), BENCH_WRITERS (4), BENCH_WRITE_TPS (15), BENCH_CATCHUP_TIMEOUT_SECONDS (120).
 */
import { NodeRuntime } from "@effect/platform-node"
import { Effect, Schedule } from "effect"
import { MariaDbInstance, type MariaDbInstanceInfo } from "../test/support/MariaDbInstance.js"
import { createReplicationUser, replicaConfig, semiSyncMasterConfig, startReplication, waitForSemiSyncClients } from "../test/support/replication.js"
import { createAppDatabase } from "./support/appDatabase.js"
import { countBetween, startBlobWriters } from "./support/blobWriters.js"

const pauseSeconds = Number(process.env.BENCH_PAUSE_SECONDS ?? 30)
const beforeSeconds = Number(process.env.BENCH_BEFORE_SECONDS ?? 15)
const rowBytes = Number(process.env.BENCH_ROW_BYTES ?? 1024 * 1024)
const writers = Number(process.env.BENCH_WRITERS ?? 4)
const catchupTimeoutMs = Number(process.env.BENCH_CATCHUP_TIMEOUT_SECONDS ?? 120) * 1000
const writeTps = Number(process.env.BENCH_WRITE_TPS ?? 15)

const seqOf = (gtid: unknown) => {
  const last = String(gtid ?? "").split(",").map((g) => Number(g.trim().split("-")[2])).filter(Number.isFinite)
  return last.length === 0 ? 0 : Math.max(...last)
}
const one = (db: MariaDbInstanceInfo, sql: string) => Effect.map(db.query<Record<string, unknown>>(sql), (rows) => rows[0] ?? {})

const program = Effect.gen(function*() {
  // As the cluster's managed servers: no statement text in the binlog (a 1 MiB literal would double it).
  const master = yield* MariaDbInstance.make({ serverId: 11, extraConfig: { ...semiSyncMasterConfig, binlog_annotate_row_events: "OFF" } })
  const replicaExtra = { ...replicaConfig, rpl_semi_sync_slave_enabled: "ON", slave_parallel_threads: 4, slave_parallel_mode: "optimistic" }
  const replica = yield* MariaDbInstance.make({ serverId: 12, extraConfig: replicaExtra })
  const other = yield* MariaDbInstance.make({ serverId: 13, extraConfig: replicaExtra })
  yield* createReplicationUser(master)
  for (const r of [replica, other]) yield* startReplication(r, master)
  yield* waitForSemiSyncClients(master, 2, "both semi-sync replicas to connect")
  yield* createAppDatabase(master, "bench")
  yield* master.query("CREATE TABLE bench.t (id INT AUTO_INCREMENT PRIMARY KEY, b LONGBLOB NOT NULL)")

  const binlogBytes = Effect.map(one(master, "SHOW GLOBAL STATUS LIKE 'Binlog_bytes_written'"), (r) => Number(r.Value))
  const load = startBlobWriters({ port: master.port, database: "bench", writers, rowBytes, maxMs: catchupTimeoutMs + (beforeSeconds + pauseSeconds + 60) * 1000, maxTps: writeTps })
  const loadStart = performance.now()
  yield* Effect.sleep(`${beforeSeconds} seconds`)
  const pausedAt = performance.now()
  const bytesAtPause = yield* binlogBytes
  yield* replica.query("STOP SLAVE IO_THREAD")
  yield* Effect.sleep(`${pauseSeconds} seconds`)
  const lagBytes = (yield* binlogBytes) - bytesAtPause
  yield* replica.query("START SLAVE IO_THREAD")
  const resumedAt = performance.now()
  process.stderr.write(`catchup-native: resumed, ${(lagBytes / 2 ** 20).toFixed(0)} MiB behind\n`)
  yield* Effect.gen(function*() {
    const head = seqOf((yield* one(master, "SELECT @@gtid_binlog_pos AS g")).g)
    const at = seqOf((yield* one(replica, "SELECT @@gtid_slave_pos AS g")).g)
    return at >= head - writers
  }).pipe(
    Effect.repeat({ schedule: Schedule.spaced("100 millis"), until: (caughtUp) => caughtUp }),
    Effect.timeout(`${catchupTimeoutMs} millis`)
  )
  const caughtUpAt = performance.now()
  yield* load.stop
  const round = (x: number) => Math.round(x * 100) / 100
  process.stderr.write(`catchup-native: ${load.acks.length} commits, ${load.state.errors} errors\n`)
  console.log(JSON.stringify({
    bench: "catchup-native",
    pausedS: pauseSeconds,
    lagBytesAtResume: lagBytes,
    catchupMs: Math.round(caughtUpAt - resumedAt),
    writeTpsDuring: round(countBetween(load.acks, resumedAt, caughtUpAt) / Math.max(0.001, (caughtUpAt - resumedAt) / 1000)),
    writeTpsBefore: round(countBetween(load.acks, loadStart, pausedAt) / ((pausedAt - loadStart) / 1000))
  }))
})

NodeRuntime.runMain(Effect.scoped(program), { disableErrorReporting: false })
