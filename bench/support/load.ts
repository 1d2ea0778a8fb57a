/** Loads about `dataMb` MB of InnoDB data through a RW port, for the rebuild and add-node benchmarks. */
import { Effect, Schedule } from "effect"
import * as LocalCluster from "../../src/testing/LocalCluster.js"
import { adminQuery, connect, run, statusOf, waitConverged, waitForMaster } from "../../test/support/dbCluster.js"

const ROWS_PER_TXN = 8

/**
 * Rows of 1 MiB made by the server itself (INSERT ... SELECT from the sequence engine,
 * 8 rows a transaction: no client bytes to send) into `rb.t`, then waits until every node
 * is healthy and caught up. Gives the table's InnoDB size in MB on the master.
 */
export const loadMegabytes = (c: LocalCluster.LocalCluster, dataMb: number, label: string) =>
  Effect.gen(function*() {
    const master = yield* waitForMaster(c, "a first master")
    yield* Effect.scoped(Effect.flatMap(connect(master.rwPort!), (conn) =>
      Effect.andThen(run(conn, "CREATE DATABASE IF NOT EXISTS rb"), run(conn, "CREATE TABLE rb.t (id INT PRIMARY KEY, b LONGBLOB)"))))
    const loadStart = performance.now()
    // REPLACE: a batch whose answer was lost (a master switch under the load) is simply done
    // again, on a new connection to the same RW port (it reaches whoever is master).
    let failovers = 0
    for (let first = 0; first < dataMb; first += ROWS_PER_TXN) {
      const batch = Effect.scoped(Effect.flatMap(connect(master.rwPort!), (conn) =>
        run(conn, `REPLACE INTO rb.t SELECT seq + ${first}, REPEAT(CHAR(97 + seq % 26), 1048576) FROM rb.seq_1_to_${Math.min(ROWS_PER_TXN, dataMb - first)}`)))
      yield* batch.pipe(
        Effect.tapError((e) => Effect.sync(() => {
          failovers++
          process.stderr.write(`${label}: load batch at ${first} failed (${e.message}); again\n`)
        })),
        Effect.retry({ schedule: Schedule.spaced("500 millis"), times: 60 })
      )
      if (first % 128 === 0) process.stderr.write(`${label}: loaded ${first} MB\n`)
    }
    if (failovers > 0) process.stderr.write(`${label}: ${failovers} load batches were retried (the master moved under the load)\n`)
    process.stderr.write(`${label}: loaded ${dataMb} rows of 1 MiB in ${Math.round(performance.now() - loadStart)} ms\n`)
    // Every node healthy again (a node the load's master switch left diverged rebuilds itself first).
    const healthy = Effect.map(Effect.forEach(c.nodes, statusOf), (ss) =>
      ss.every((s) => !("error" in s) && s.database?.diverged === null && s.database.rebuild == null && (s.database.role === "master" || s.database.role === "replica")))
    yield* LocalCluster.waitFor("every node to be healthy", healthy, 600_000)
    yield* waitConverged(c, 600_000)
    const current = yield* waitForMaster(c, "the master after the load")
    yield* adminQuery(current, "ANALYZE TABLE rb.t")
    const [size] = yield* adminQuery<{ bytes: number | string }>(
      current,
      "SELECT data_length + index_length AS bytes FROM information_schema.tables WHERE table_schema = 'rb' AND table_name = 't'"
    )
    return { master: current, innodbMb: Number(size?.bytes ?? 0) / 1024 / 1024 }
  })
