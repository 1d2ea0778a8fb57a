/**
 * This node's own MariaDB as the agent uses it: managed (the agent runs mariadbd in its
 * data dir) or attached (the operator runs it), with the node-local replication login its
 * capture client and binlog server share.
 */
import { Context, Effect, Layer, Schedule } from "effect"
import { randomBytes } from "node:crypto"
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import * as MariaDbServer from "./MariaDbServer.js"
import { forkScopedLogged } from "../fibers.js"

export const REPLICATION_USER = "phxmaria_repl"

/** How long a node keeps its MariaDB binlog files by default: a day. */
export const DEFAULT_BINLOG_RETAIN_SECONDS = 86_400
export const DEFAULT_BINLOG_RETAIN_BYTES = 1024 * 1024 * 1024

/**
 * Purges the oldest binlog files while the others hold at least `bytes` (the newest file
 * always stays). MariaDB skips a file a dump thread still reads.
 */
export const purgeBinlogBeyond = (server: MariaDbServer.MariaDbServerShape, bytes: number) =>
  Effect.gen(function*() {
    const files = (yield* server.query("SHOW BINARY LOGS")) as ReadonlyArray<{ readonly Log_name: string; readonly File_size: number | string }>
    let newer = 0
    for (let i = files.length - 1; i > 0; i--) {
      newer += Number(files[i]!.File_size)
      if (newer >= bytes) {
        yield* server.query("PURGE BINARY LOGS TO ?", [files[i]!.Log_name])
        return files.length - i
      }
    }
    return 0
  })

/** 1 GiB: MariaDB's own ceiling for one event (max_allowed_packet) and the default largest transaction. */
export const DEFAULT_MAX_TRANSACTION_BYTES = 1024 * 1024 * 1024

export interface ReplicationLogin {
  readonly user: string
  readonly password: string
}

export interface LocalMariaDbShape {
  readonly server: MariaDbServer.MariaDbServerShape
  /** Whether the agent may kill and restart mariadbd (managed mode). */
  readonly managed: boolean
  readonly replication: ReplicationLogin
  /**
   * Managed only: kills mariadbd, sets its dir aside as `<dir>.diverged` (replacing an older
   * one), starts a new server on a new datadir and creates the replication login on it.
   */
  readonly reinstall: Effect.Effect<string, MariaDbServer.MariaDbStartError | MariaDbServer.MariaDbNotManaged>
}

export class LocalMariaDb extends Context.Service<LocalMariaDb, LocalMariaDbShape>()("phxmaria/LocalMariaDb") {}

/** my.cnf settings every managed node needs (docs/mariadb.md): semi-sync ready, truncation on restart. */
export const managedServerConfig = (
  port: number,
  maxTransactionBytes = DEFAULT_MAX_TRANSACTION_BYTES,
  binlogRetainSeconds = DEFAULT_BINLOG_RETAIN_SECONDS,
  binlogRetainBytes = DEFAULT_BINLOG_RETAIN_BYTES
): Record<string, string | number | boolean> => ({
  port,
  // Nothing reads a node's old binlog files: replicas are fed from the chosen log, a new
  // master's capture starts after the log's last GTID (in the newest file), and crash
  // truncation reads the last one. MariaDB purges older ones at rotation, never the active
  // one or one a dump thread reads; the agent purges by size (purgeBinlogBeyond).
  binlog_expire_logs_seconds: binlogRetainSeconds,
  // Files of at most a quarter of what is kept (1 to 64 MiB): purging by whole files stays close to the bound.
  max_binlog_size: Math.max(1 << 20, Math.min(64 << 20, Math.floor(binlogRetainBytes / 4))),
  // The largest transaction the cluster takes: MariaDB refuses a larger one before commit
  // (ER_TRANS_CACHE_FULL), so nothing it cannot replicate reaches the binlog.
  max_binlog_cache_size: maxTransactionBytes,
  max_binlog_stmt_cache_size: maxTransactionBytes,
  // Row events only: MariaDB's default also logs each statement's text (Annotate_rows), which
  // for a blob sent as a literal is twice the row again (measured: 100 rows of 1 MiB were a
  // 314 MB transaction with it, ~100 MB without). The chosen log carries every byte of it.
  binlog_annotate_row_events: "OFF",
  "bind-address": "127.0.0.1",
  // Crash recovery drops prepared, un-ACKed transactions (never committed forward).
  "init-rpl-role": "SLAVE",
  rpl_semi_sync_slave_enabled: "ON",
  // Enabled by the agent when this node becomes master; never falls back to async.
  rpl_semi_sync_master_enabled: "OFF",
  rpl_semi_sync_master_wait_point: "AFTER_SYNC",
  rpl_semi_sync_master_wait_no_slave: "ON",
  rpl_semi_sync_master_timeout: "18446744073709551615",
  read_only: "ON",
  proxy_protocol_networks: "127.0.0.0/8,localhost",
  // Replicas apply the chosen log in parallel (in commit order), committing in groups: a
  // replica behind the log catches up faster than the master writes.
  slave_parallel_threads: 4,
  slave_parallel_mode: "optimistic",
  max_allowed_packet: "64M",
  slave_max_allowed_packet: "1073741824",
  // Above the proxy's four listeners at their default bound (4 x 1000), with room for the
  // agent's own logins: a full proxy never locks the capture client out.
  max_connections: 4200
})

/** The replication password of this node (local to it: its capture client and its binlog server). */
const replicationPassword = (dataDir: string): string => {
  const file = join(dataDir, "replication.secret")
  try {
    return readFileSync(file, "utf8").trim()
  } catch {
    const secret = randomBytes(18).toString("base64url")
    mkdirSync(dataDir, { recursive: true })
    writeFileSync(file, secret + "\n", { mode: 0o600 })
    return secret
  }
}

/** The replication login, created on this server only (sql_log_bin=0: no GTID for the others to lack). */
const ensureReplicationUser = (db: MariaDbServer.MariaDbServerShape, password: string) =>
  Effect.forEach(["127.0.0.1", "localhost"], (host) =>
    Effect.gen(function*() {
      yield* db.query("SET STATEMENT sql_log_bin=0 FOR CREATE USER IF NOT EXISTS ?@? IDENTIFIED BY ?", [REPLICATION_USER, host, password])
      yield* db.query("SET STATEMENT sql_log_bin=0 FOR ALTER USER ?@? IDENTIFIED BY ?", [REPLICATION_USER, host, password])
      yield* db.query("SET STATEMENT sql_log_bin=0 FOR GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO ?@?", [REPLICATION_USER, host])
    }), { discard: true })

export interface LocalMariaDbOptions {
  readonly nodeId: number
  /** The agent's data dir: a managed server lives in `mariadb/` under it, the replication secret beside it. */
  readonly dataDir: string
  readonly mode: "managed" | "attach"
  readonly port: number
  /** Attach mode: how the agent logs in as an administrator. */
  readonly socket?: string | undefined
  readonly user?: string | undefined
  readonly password?: string | undefined
  /** Managed mode: my.cnf lines over the required ones. */
  readonly extraConfig?: Record<string, string | number | boolean> | undefined
  /** The largest transaction MariaDB accepts (max_binlog_cache_size); default 1 GiB. */
  readonly maxTransactionBytes?: number | undefined
  /** Managed: MariaDB purges its binlog files older than this (binlog_expire_logs_seconds); default a day. */
  readonly binlogRetainSeconds?: number | undefined
  /** Managed: the agent purges the oldest binlog files beyond this many bytes; default 1 GiB. */
  readonly binlogRetainBytes?: number | undefined
}

export const make = Effect.fnUntraced(function*(options: LocalMariaDbOptions) {
  const managed = options.mode === "managed"
  const server = managed
    ? yield* MariaDbServer.makeManaged({
      dir: join(options.dataDir, "mariadb"),
      port: options.port,
      serverId: options.nodeId,
      extraConfig: {
        ...managedServerConfig(options.port, options.maxTransactionBytes, options.binlogRetainSeconds, options.binlogRetainBytes),
        ...options.extraConfig
      },
      // Restarts are the agent's (NodeDatabase): RW must be fenced before mariadbd runs again.
      supervise: false
    })
    : yield* MariaDbServer.attach({
      host: "127.0.0.1",
      port: options.port,
      ...(options.socket !== undefined ? { socket: options.socket } : {}),
      // Checked by the config (attach needs a user).
      user: options.user ?? "root",
      ...(options.password !== undefined ? { password: options.password } : {})
    })
  if (!managed) {
    // The operator's server: the same bound, for the sessions that start from now on.
    const max = options.maxTransactionBytes ?? DEFAULT_MAX_TRANSACTION_BYTES
    yield* server.query("SET GLOBAL max_binlog_cache_size = ?, GLOBAL max_binlog_stmt_cache_size = ?", [max, max]).pipe(
      Effect.catch((e) => Effect.logWarning(`could not bound transactions to ${max} bytes on the attached MariaDB: ${e.message}`))
    )
  }
  const password = replicationPassword(options.dataDir)
  const withLogin = ensureReplicationUser(server, password).pipe(Effect.retry({ schedule: Schedule.spaced("200 millis"), times: 50 }))
  yield* withLogin
  const reinstall = Effect.gen(function*() {
    const dir = server.dir
    if (!managed || dir === undefined) return yield* new MariaDbServer.MariaDbNotManaged({ operation: "reinstall" })
    const aside = `${dir}.diverged`
    yield* server.kill
    yield* Effect.sync(() => {
      rmSync(aside, { recursive: true, force: true })
      renameSync(dir, aside)
    })
    yield* server.start
    yield* withLogin.pipe(
      Effect.mapError((cause) => new MariaDbServer.MariaDbStartError({ stage: "timeout", message: `no replication login on the new server: ${cause.message}`, dir }))
    )
    return aside
  })
  if (managed) {
    yield* purgeBinlogBeyond(server, options.binlogRetainBytes ?? DEFAULT_BINLOG_RETAIN_BYTES).pipe(
      // A server that is down or restarting is purged at the next round.
      Effect.catch(() => Effect.succeed(0)),
      Effect.repeat(Schedule.spaced("10 seconds")),
      forkScopedLogged("mariadb: purging binlog files beyond log.retainMb")
    )
  }
  return LocalMariaDb.of({ server, managed, replication: { user: REPLICATION_USER, password }, reinstall })
})

export const layer = (options: LocalMariaDbOptions) => Layer.effect(LocalMariaDb, make(options))
