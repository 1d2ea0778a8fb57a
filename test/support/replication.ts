/** Test helpers for replication scenarios against real mariadbd instances (docs/mariadb.md). */
import { Effect, Schedule } from "effect"
import type { MariaDbInstanceInfo } from "./MariaDbInstance.js"

/** A master whose commits wait for the (only) semi-sync replica's ACK, never falling back. */
export const semiSyncMasterConfig = {
  rpl_semi_sync_master_enabled: "ON",
  rpl_semi_sync_master_wait_point: "AFTER_SYNC",
  rpl_semi_sync_master_wait_no_slave: "ON",
  rpl_semi_sync_master_timeout: "18446744073709551615",
  max_allowed_packet: "64M"
} as const

/** Turns lossless semi-sync on at run time (after setup that must not wait for an ACK). */
export const enableSemiSync = (db: MariaDbInstanceInfo) =>
  Effect.forEach(
    [
      "rpl_semi_sync_master_wait_point = AFTER_SYNC",
      "rpl_semi_sync_master_wait_no_slave = ON",
      "rpl_semi_sync_master_timeout = 18446744073709551615",
      "rpl_semi_sync_master_enabled = ON"
    ],
    (setting) => db.query(`SET GLOBAL ${setting}`),
    { discard: true }
  )

export const replicaConfig = {
  max_allowed_packet: "64M",
  slave_max_allowed_packet: "1073741824"
} as const

export const REPL_USER = "repl"
export const REPL_PASSWORD = "repl-secret"

/** A replication user with a native password, created without writing a GTID. */
export const createReplicationUser = (db: MariaDbInstanceInfo, user = REPL_USER, password = REPL_PASSWORD) =>
  Effect.gen(function*() {
    yield* db.query(`SET STATEMENT sql_log_bin=0 FOR CREATE USER '${user}'@'127.0.0.1' IDENTIFIED BY '${password}'`)
    yield* db.query(`SET STATEMENT sql_log_bin=0 FOR GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO '${user}'@'127.0.0.1'`)
  })

/**
 * `count` transactions of mixed DDL and DML in database `db_name`: table creation and
 * alteration, single-row inserts, updates and deletes, and multi-statement transactions.
 */
export const mixedWorkload = (db: MariaDbInstanceInfo, count: number, dbName = "w") =>
  Effect.gen(function*() {
    yield* db.query(`CREATE DATABASE IF NOT EXISTS ${dbName}`)
    yield* db.query(`CREATE TABLE IF NOT EXISTS ${dbName}.kv (k INT PRIMARY KEY, v VARCHAR(64), n INT NOT NULL DEFAULT 0)`)
    // Every statement below changes a row, so each one is exactly one binlog transaction.
    const upsert = `INSERT INTO ${dbName}.kv (k, v) VALUES (?, ?) ON DUPLICATE KEY UPDATE v = VALUES(v), n = n + 1`
    for (let i = 2; i < count; i++) {
      const k = i % 500
      switch (i % 10) {
        case 5:
          // the row the multi-statement transaction of i - 9 inserted
          if (i >= 15) yield* db.query(`DELETE FROM ${dbName}.kv WHERE k = ?`, [100_000 + i - 9])
          else yield* db.query(upsert, [k, `d${i}`])
          break
        case 6:
          // a multi-statement transaction
          yield* db.query(
            `BEGIN NOT ATOMIC START TRANSACTION; INSERT INTO ${dbName}.kv (k, v) VALUES (${100_000 + i}, 'm'); ` +
              `INSERT INTO ${dbName}.kv (k, v) VALUES (${k}, 'm') ON DUPLICATE KEY UPDATE n = n + 1; COMMIT; END`
          )
          break
        case 7:
          if (i % 200 === 7) yield* db.query(`CREATE TABLE ${dbName}.t${i} (id INT PRIMARY KEY, s TEXT)`)
          else yield* db.query(upsert, [k, `x${i}`])
          break
        default:
          yield* db.query(upsert, [k, `v${i}`])
      }
    }
  })

/** CHECKSUM TABLE of every table in `dbName`, by table name. */
export const checksums = (db: MariaDbInstanceInfo, dbName = "w") =>
  Effect.gen(function*() {
    const tables = yield* db.query<{ t: string }>(
      "SELECT table_name AS t FROM information_schema.tables WHERE table_schema = ? ORDER BY table_name",
      [dbName]
    )
    const out: Record<string, string> = {}
    for (const { t } of tables) {
      const [row] = yield* db.query<{ Checksum: unknown }>(`CHECKSUM TABLE ${dbName}.${t}`)
      out[t] = String(row?.Checksum)
    }
    return out
  })

export const gtidBinlogPos = (db: MariaDbInstanceInfo) =>
  Effect.map(db.query<{ p: string }>("SELECT @@gtid_binlog_pos AS p"), (rows) => rows[0]?.p ?? "")

export const gtidSlavePos = (db: MariaDbInstanceInfo) =>
  Effect.map(db.query<{ p: string }>("SELECT @@gtid_slave_pos AS p"), (rows) => rows[0]?.p ?? "")

/** Points `replica` at a master (a binlog server) by GTID and starts replicating. */
export const startReplication = (replica: MariaDbInstanceInfo, master: { host: string; port: number }, user = REPL_USER, password = REPL_PASSWORD) =>
  Effect.gen(function*() {
    // docs/mariadb.md: slave_pos with gtid_slave_pos from the binlog, and an explicit heartbeat.
    yield* replica.query("SET GLOBAL gtid_slave_pos = @@gtid_binlog_pos")
    yield* replica.query(
      `CHANGE MASTER TO MASTER_HOST='${master.host}', MASTER_PORT=${master.port}, MASTER_USER='${user}', ` +
        `MASTER_PASSWORD='${password}', MASTER_USE_GTID=slave_pos, MASTER_HEARTBEAT_PERIOD=1, MASTER_CONNECT_RETRY=1`
    )
    yield* replica.query("START SLAVE")
  })

/** Waits (bounded) until `check` of the replica's state holds; fails with its last status. */
export const waitForReplica = (replica: MariaDbInstanceInfo, what: string, check: Effect.Effect<boolean, unknown>, timeoutMs: number) =>
  check.pipe(
    Effect.catch(() => Effect.succeed(false)),
    Effect.repeat({ schedule: Schedule.spaced("100 millis"), until: (ok) => ok }),
    Effect.timeoutOrElse({
      duration: `${timeoutMs} millis`,
      orElse: () =>
        Effect.flatMap(replica.query("SHOW SLAVE STATUS"), (rows) =>
          Effect.fail(new Error(`timed out waiting for ${what}; slave status: ${JSON.stringify(rows[0] ?? {}).slice(0, 1500)}`)))
    })
  )

/** Waits (bounded, 30 s) until `count` semi-sync replicas are connected to `master`. */
export const waitForSemiSyncClients = (master: MariaDbInstanceInfo, count: number, what: string) =>
  waitForReplica(
    master,
    what,
    Effect.map(master.query<{ Value: string }>("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_clients'"), (r) => Number(r[0]?.Value) === count),
    30_000
  )
