/**
 * This node's own MariaDB as the agent uses it: managed (the agent runs mariadbd in its
 * data dir) or attached (the operator runs it), with the node-local replication login its
 * capture client and binlog server share.
 */
import {
  AGENT_CONNECTIONS,
  collationFor,
  DEFAULT_CHARACTER_SET,
  DEFAULT_MAX_CONNECTIONS,
  defaultBufferPoolMb,
  firstClassServerOptions,
  malformedServerOptions,
  protectedServerOptions
} from "../../domain/mysql/serverOptions.js"
import { Context, Data, Effect, Layer, Schedule, type Scope } from "effect"
import { spawn } from "node:child_process"
import { randomBytes } from "node:crypto"
import { chmodSync, chownSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs"
import { totalmem } from "node:os"
import { join } from "node:path"
import type { Readable } from "node:stream"
import { findBinary, mariadbEnv, serverUser } from "./MariaDbLayout.js"
import { formatGtid, type Gtid, parseGtid } from "../../domain/cluster/gtid.js"
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
  /**
   * Managed only: a consistent physical copy of the running server (mariadb-backup, as an
   * mbstream on `body`) and about how many bytes its datadir holds. The server keeps
   * serving; the copy stops when the scope closes.
   */
  readonly backup: Effect.Effect<{ readonly body: Readable; readonly dataBytes: number }, BackupFailed | MariaDbServer.MariaDbNotManaged, Scope.Scope>
  /**
   * Managed only: replaces the server by a copy read from `body` (an mbstream from a peer's
   * {@link LocalMariaDbShape.backup}): unpacked and prepared beside the old one, which is
   * only then set aside (as `<dir>.diverged`), and started with the copy's GTID position as
   * its binlog state. A failure before the swap leaves the old dir where it was.
   */
  readonly restore: (body: Readable) => Effect.Effect<{ readonly gtid: Gtid | null; readonly aside: string }, BackupFailed | MariaDbServer.MariaDbStartError | MariaDbServer.MariaDbNotManaged>
}

/** mariadb-backup or mbstream failed (with what it printed last). */
export class BackupFailed extends Data.TaggedError("BackupFailed")<{ readonly stage: string; readonly message: string }> {}

/** Runs a tool to its end; fails with its last output. `stdin` is piped in when given. */
const runTool = (stage: string, bin: string, args: ReadonlyArray<string>, stdin?: Readable) =>
  Effect.callback<void, BackupFailed>((resume) => {
    const child = spawn(bin, args, { stdio: [stdin === undefined ? "ignore" : "pipe", "ignore", "pipe"], env: mariadbEnv() })
    let tail = ""
    child.stderr!.on("data", (d: Buffer) => {
      tail = (tail + d.toString("utf8")).slice(-2000)
    })
    if (stdin !== undefined) {
      stdin.on("error", (e) => {
        tail += `\ninput: ${e.message}`
        child.kill("SIGKILL")
      })
      child.stdin!.on("error", () => undefined)
      stdin.pipe(child.stdin!)
    }
    child.on("error", (e) => resume(Effect.fail(new BackupFailed({ stage, message: e.message }))))
    child.on("close", (code, signal) =>
      resume(code === 0 ? Effect.void : Effect.fail(new BackupFailed({ stage, message: `exit ${code ?? signal}: ${tail.trim()}` }))))
    return Effect.sync(() => {
      if (child.exitCode === null) child.kill("SIGKILL")
    })
  })

/** Bytes under a directory (files only). */
const bytesUnder = (dir: string): number => {
  let n = 0
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name)
    if (e.isDirectory()) n += bytesUnder(p)
    else if (e.isFile()) n += statSync(p).size
  }
  return n
}

/** The GTID position a prepared copy holds (xtrabackup_binlog_info in 10.x, mariadb_backup_binlog_info later). */
const copiedPosition = (dataDir: string): Gtid | null => {
  for (const name of ["mariadb_backup_binlog_info", "xtrabackup_binlog_info"]) {
    const file = join(dataDir, name)
    if (!existsSync(file)) continue
    const gtids = (readFileSync(file, "utf8").trim().split("\t")[2] ?? "").split(",")
    return parseGtid(gtids[0] ?? "") ?? null
  }
  return null
}

/** A managed server's directory under the node's dataDir. */
export const managedDirOf = (dataDir: string) => join(dataDir, "mariadb")

export class LocalMariaDb extends Context.Service<LocalMariaDb, LocalMariaDbShape>()("phxmaria/LocalMariaDb") {}

/** The sizes and character set of a managed server (config `mariadb.*`), defaults filled in by {@link managedServerSizing}. */
export interface ManagedServerSizing {
  readonly bufferPoolMb: number
  /** Client connections; max_connections is this plus AGENT_CONNECTIONS. */
  readonly maxConnections: number
  readonly characterSet: string
  /** Undefined: the character set's own default collation. */
  readonly collation: string | undefined
}

/**
 * The managed server's sizes from the options, else the defaults (docs/operations.md, "The
 * managed server's settings"): half this machine's memory for the buffer pool, 1000 client
 * connections, utf8mb4 with utf8mb4_general_ci.
 */
export const managedServerSizing = (options: {
  readonly bufferPoolMb?: number | undefined
  readonly maxConnections?: number | undefined
  readonly characterSet?: string | undefined
  readonly collation?: string | undefined
}): ManagedServerSizing => {
  const characterSet = options.characterSet ?? DEFAULT_CHARACTER_SET
  return {
    bufferPoolMb: options.bufferPoolMb ?? defaultBufferPoolMb(memoryForThisNode()),
    maxConnections: options.maxConnections ?? DEFAULT_MAX_CONNECTIONS,
    characterSet,
    collation: collationFor(characterSet, options.collation)
  }
}

/** The machine's memory, or less when a cgroup limits this process (a container, systemd's MemoryMax). */
const memoryForThisNode = (): number => {
  const limit = process.constrainedMemory()
  return limit > 0 && limit < totalmem() ? limit : totalmem()
}

/**
 * The redo log for a buffer pool of `bufferPoolMb`: a quarter of it, at least 256 MiB (disk,
 * not memory). A row's bytes go through the redo log too: with 16 MiB, 1 MiB rows kept the
 * checkpoint age near the limit, and writes waited for page flushes (a replica applied
 * 30 a second; with 256 MiB, 35-55, and bench:catchup took 37 s instead of 55-75).
 */
export const redoLogMb = (bufferPoolMb: number): number => Math.max(256, Math.min(4096, Math.floor(bufferPoolMb / 4)))

/** my.cnf settings every managed node needs (docs/mariadb.md): semi-sync ready, truncation on restart. */
export const managedServerConfig = (
  port: number,
  maxTransactionBytes = DEFAULT_MAX_TRANSACTION_BYTES,
  binlogRetainSeconds = DEFAULT_BINLOG_RETAIN_SECONDS,
  binlogRetainBytes = DEFAULT_BINLOG_RETAIN_BYTES,
  sizing: ManagedServerSizing = managedServerSizing({})
): Record<string, string | number | boolean> => ({
  port,
  innodb_buffer_pool_size: `${sizing.bufferPoolMb}M`,
  // The redo log grows with the pool (a quarter of it, 256 MiB to 4 GiB): with a small one
  // InnoDB checkpoints, and flushes pages, far more often than a large pool needs.
  innodb_log_file_size: `${redoLogMb(sizing.bufferPoolMb)}M`,
  // Every relay the proxy opens to this server is one of its connections; the agent's own
  // logins (its pool, the binlog captures, a copy for a peer) come on top, so that clients
  // up to mariadb.maxConnections never lock the agent out (docs/operations.md).
  max_connections: sizing.maxConnections + AGENT_CONNECTIONS,
  // The server's default for new databases and tables (utf8mb4: every Unicode character,
  // 4-byte ones too); MariaDB's own default is latin1.
  character_set_server: sizing.characterSet,
  ...(sizing.collation !== undefined ? { collation_server: sizing.collation } : {}),
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
  // Every table InnoDB: a MyISAM/Aria write takes effect before the commit waits for the
  // log and cannot be truncated after a crash (docs/operations.md, "What a crash keeps").
  enforce_storage_engine: "InnoDB",
  // Crash recovery drops prepared, un-ACKed transactions (never committed forward).
  "init-rpl-role": "SLAVE",
  rpl_semi_sync_slave_enabled: "ON",
  // Enabled by the agent when this node becomes master; never falls back to async.
  rpl_semi_sync_master_enabled: "OFF",
  rpl_semi_sync_master_wait_point: "AFTER_SYNC",
  rpl_semi_sync_master_wait_no_slave: "ON",
  rpl_semi_sync_master_timeout: "18446744073709551615",
  read_only: "ON",
  // PROXY headers only over the Unix socket (in the 0700 datadir): the agent's proxy relays
  // there, and no other local process can fake a client address over TCP.
  proxy_protocol_networks: "localhost",
  // Replicas apply the chosen log in parallel (in commit order), committing in groups: a
  // replica behind the log catches up faster than the master writes.
  slave_parallel_threads: 4,
  slave_parallel_mode: "optimistic",
  max_allowed_packet: "64M",
  slave_max_allowed_packet: "1073741824"
})

const startError = (dir: string) => (cause: { readonly message: string }) =>
  new MariaDbServer.MariaDbStartError({ stage: "timeout", message: `the restored server: ${cause.message}`, dir })

/** The replication password of this node (local to it: its capture client and its binlog server). */
const replicationPassword = (dataDir: string): string => {
  const file = join(dataDir, "replication.secret")
  try {
    return readFileSync(file, "utf8").trim()
  } catch {
    const secret = randomBytes(18).toString("base64url")
    mkdirSync(dataDir, { recursive: true, mode: 0o700 })
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
  /** Managed: innodb_buffer_pool_size in MiB; default half this machine's memory (defaultBufferPoolMb). */
  readonly bufferPoolMb?: number | undefined
  /** Managed: client connections (max_connections is this plus AGENT_CONNECTIONS); default 1000. */
  readonly maxConnections?: number | undefined
  /** character_set_server (managed: default utf8mb4; attach: SET GLOBAL when given). */
  readonly characterSet?: string | undefined
  /** collation_server (managed: default utf8mb4_general_ci with utf8mb4; attach: SET GLOBAL when given). */
  readonly collation?: string | undefined
  /** Managed: the certificate MariaDB offers clients over TLS (ssl_cert, ssl_key). */
  readonly ssl?: { readonly cert: string; readonly key: string; readonly require?: boolean | undefined } | undefined
}

/**
 * The certificate and key a managed mariadbd reads. Run as `mysql` (the agent is root), it
 * cannot read the operator's key (0600, root's): a copy in `dataDir/server-ssl`, readable
 * by root and the server's group only, made at each start (a renewed certificate applies).
 */
const serverSslFiles = (dataDir: string, ssl: { readonly cert: string; readonly key: string }) =>
  Effect.try({
    try: () => {
      const u = serverUser()
      if (u === undefined) return { cert: ssl.cert, key: ssl.key }
      const dir = join(dataDir, "server-ssl")
      mkdirSync(dir, { recursive: true })
      chownSync(dir, 0, u.gid)
      chmodSync(dir, 0o750)
      const copy = (from: string, name: string) => {
        const to = join(dir, name)
        writeFileSync(to, readFileSync(from), { mode: 0o640 })
        chownSync(to, 0, u.gid)
        chmodSync(to, 0o640)
        return to
      }
      return { cert: copy(ssl.cert, "server.crt"), key: copy(ssl.key, "server.key") }
    },
    catch: (e) => new MariaDbServer.MariaDbStartError({ stage: "config", message: `mariadb.ssl: ${e instanceof Error ? e.message : String(e)}`, dir: managedDirOf(dataDir) })
  })

export const make = Effect.fnUntraced(function*(options: LocalMariaDbOptions) {
  const managed = options.mode === "managed"
  // The config refuses these already; an embedding app may build the options itself.
  const extra = options.extraConfig ?? {}
  const refused = [...protectedServerOptions(extra), ...firstClassServerOptions(extra).map((o) => `${o.key} (use ${o.use})`), ...malformedServerOptions(extra)]
  if (managed && refused.length > 0) {
    return yield* new MariaDbServer.MariaDbStartError({
      stage: "config",
      message: `extraConfig may not set ${refused.join(", ")}: the cluster's safety rests on the agent's own value`,
      dir: managedDirOf(options.dataDir)
    })
  }
  const ssl = managed && options.ssl !== undefined ? yield* serverSslFiles(options.dataDir, options.ssl) : undefined
  const server = managed
    ? yield* MariaDbServer.makeManaged({
      dir: managedDirOf(options.dataDir),
      port: options.port,
      serverId: options.nodeId,
      extraConfig: {
        ...managedServerConfig(options.port, options.maxTransactionBytes, options.binlogRetainSeconds, options.binlogRetainBytes, managedServerSizing(options)),
        ...(ssl !== undefined ? { ssl_cert: ssl.cert, ssl_key: ssl.key } : {}),
        ...(options.ssl?.require === true ? { require_secure_transport: "ON" } : {}),
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
    // Only what the config names (the operator's server keeps its own otherwise), for the
    // databases made from now on; the set first: setting it resets the collation. Not applied
    // is an error: the node would otherwise store text in a character set nobody chose.
    for (const [variable, value] of [["character_set_server", options.characterSet], ["collation_server", options.collation]] as const) {
      if (value === undefined) continue
      yield* server.query(`SET GLOBAL ${variable} = ?`, [value]).pipe(
        Effect.mapError((e) =>
          new MariaDbServer.MariaDbStartError({ stage: "config", message: `cannot set ${variable} to ${value} on the attached MariaDB: ${e.message}`, cause: e })
        )
      )
    }
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
  const backup = Effect.gen(function*() {
    const dir = server.dir
    if (!managed || dir === undefined || server.dataDir === undefined || server.socket === undefined) {
      return yield* new MariaDbServer.MariaDbNotManaged({ operation: "backup" })
    }
    const bin = yield* findBinary("mariadb-backup").pipe(Effect.mapError((e) => new BackupFailed({ stage: "backup", message: e.message })))
    const work = join(dir, `backup-${Date.now()}`)
    const dataBytes = bytesUnder(server.dataDir)
    const child = yield* Effect.acquireRelease(
      Effect.sync(() => {
        mkdirSync(work, { recursive: true })
        return spawn(bin, [
          "--backup",
          "--stream=mbstream",
          `--target-dir=${work}`,
          `--datadir=${server.dataDir}`,
          `--socket=${server.socket}`,
          `--user=${server.user}`
        ], { stdio: ["ignore", "pipe", "pipe"], env: mariadbEnv() })
      }),
      (c) => Effect.sync(() => {
        if (c.exitCode === null) c.kill("SIGKILL")
        rmSync(work, { recursive: true, force: true })
      })
    )
    let tail = ""
    child.stderr!.on("data", (d: Buffer) => {
      tail = (tail + d.toString("utf8")).slice(-2000)
    })
    // A failed copy must not look like a short one: the stream errors instead of ending.
    child.on("close", (code) => {
      if (code !== 0) child.stdout!.destroy(new Error(`mariadb-backup failed (exit ${code}): ${tail.trim()}`))
    })
    return { body: child.stdout!, dataBytes }
  })

  const restore = (body: Readable) =>
    Effect.gen(function*() {
      const dir = server.dir
      if (!managed || dir === undefined) return yield* new MariaDbServer.MariaDbNotManaged({ operation: "restore" })
      const bin = yield* Effect.all([findBinary("mbstream"), findBinary("mariadb-backup")]).pipe(
        Effect.mapError((e) => new BackupFailed({ stage: "binaries", message: e.message }))
      )
      const incoming = `${dir}.incoming`
      const data = join(incoming, "data")
      yield* Effect.sync(() => {
        rmSync(incoming, { recursive: true, force: true })
        mkdirSync(data, { recursive: true })
      })
      const unpacked = Effect.andThen(
        runTool("unpack", bin[0], ["-x", "-C", data], body),
        runTool("prepare", bin[1], ["--prepare", `--target-dir=${data}`])
      )
      // Nothing half-copied is ever started: a failure before the swap removes the copy.
      yield* unpacked.pipe(Effect.onError(() => Effect.sync(() => rmSync(incoming, { recursive: true, force: true }))))
      const gtid = copiedPosition(data)
      const aside = `${dir}.diverged`
      yield* server.kill
      yield* Effect.sync(() => {
        rmSync(aside, { recursive: true, force: true })
        renameSync(dir, aside)
        renameSync(incoming, dir)
      })
      yield* server.start
      // The copy has no binlog: its position becomes the new binlog's state (so the server
      // says where it is, and a replica of the chosen log resumes after it).
      yield* server.query("RESET MASTER").pipe(Effect.mapError(startError(dir)))
      if (gtid !== null) yield* server.query("SET GLOBAL gtid_binlog_state = ?", [formatGtid(gtid)]).pipe(Effect.mapError(startError(dir)))
      yield* withLogin.pipe(Effect.mapError(startError(dir)))
      return { gtid, aside }
    })

  return LocalMariaDb.of({ server, managed, replication: { user: REPLICATION_USER, password }, reinstall, backup, restore })
})

export const layer = (options: LocalMariaDbOptions) => Layer.effect(LocalMariaDb, make(options))
