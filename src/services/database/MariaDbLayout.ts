/**
 * The files of a managed server: the layout of its dir, my.cnf, the datadir install
 * (mariadb-install-db), the binaries, and reading the error log.
 */
import { execFile } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { Effect } from "effect"
import { MariaDbStartError } from "./MariaDbErrors.js"

export type ExtraConfig = Readonly<Record<string, string | number | boolean>>

const isRoot = () => process.getuid?.() === 0

/** The OS user: mariadb-install-db gives it unix_socket login with all privileges. */
export const adminUser = () => (isRoot() ? "root" : os.userInfo().username)

export interface ServerUser {
  readonly name: string
  readonly uid: number
  readonly gid: number
}

const SERVER_USER = "mysql"

/**
 * The OS user a managed mariadbd runs as when the agent is root: `mysql` (made by the
 * mariadb-server package), so a compromised server cannot act as root. Undefined when the
 * agent is not root (mariadbd runs as the agent's user) or no such user exists (then root).
 */
export const serverUser = (): ServerUser | undefined => {
  if (!isRoot()) return undefined
  try {
    for (const line of fs.readFileSync("/etc/passwd", "utf8").split("\n")) {
      const [name, , uid, gid] = line.split(":")
      if (name === SERVER_USER && uid !== undefined && gid !== undefined) return { name, uid: Number(uid), gid: Number(gid) }
    }
  } catch {
    // No passwd file to read: root it is.
  }
  return undefined
}

/** The first directory on the way to `dir` (itself included) that `u` may not pass, if any. */
export const blockedFor = (u: ServerUser, dir: string): { readonly dir: string; readonly mode: number } | undefined => {
  const parts = path.resolve(dir).split(path.sep).filter((p) => p.length > 0)
  for (let i = 0; i <= parts.length; i++) {
    const at = path.sep + parts.slice(0, i).join(path.sep)
    let st: fs.Stats
    try {
      st = fs.statSync(at)
    } catch {
      return undefined // not made yet: mkdir makes it passable
    }
    const passable = st.uid === u.uid ? (st.mode & 0o100) !== 0 : st.gid === u.gid ? (st.mode & 0o010) !== 0 : (st.mode & 0o001) !== 0
    if (!passable) return { dir: at, mode: st.mode & 0o777 }
  }
  return undefined
}

const chownTree = (dir: string, u: ServerUser): void => {
  fs.lchownSync(dir, u.uid, u.gid)
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const at = path.join(dir, e.name)
    if (e.isDirectory()) chownTree(at, u)
    else fs.lchownSync(at, u.uid, u.gid)
  }
}

/**
 * Before every start (and install): the server's dir belongs to the user it runs as
 * (the agent, as root, unpacks copies and writes the config there), and that user can
 * reach it. A dir it cannot reach is an error naming the directory, not a silent root.
 */
export const ownDir = (l: Layout) =>
  Effect.suspend(() => {
    const u = serverUser()
    if (u === undefined) return Effect.void
    const blocked = blockedFor(u, l.dir)
    if (blocked !== undefined) {
      return Effect.fail(new MariaDbStartError({
        stage: "permissions",
        message: `mariadbd runs as the OS user ${u.name} (the agent is root), which cannot enter ${blocked.dir} (mode ${blocked.mode.toString(8)}): ` +
          `give it passage (chmod o+x, or chgrp ${u.name} and chmod g+x) or put dataDir elsewhere`,
        dir: l.dir
      }))
    }
    return Effect.try({
      try: () => chownTree(l.dir, u),
      catch: (cause) => new MariaDbStartError({ stage: "permissions", message: `chown -R ${u.name} ${l.dir} failed: ${String(cause)}`, dir: l.dir, cause })
    })
  })

const binaryDirs = () => [
  ...(process.env.PATH ?? "").split(path.delimiter).filter((d) => d.length > 0),
  "/usr/sbin",
  "/usr/bin",
  "/usr/local/sbin",
  "/usr/local/bin"
]

export const findBinary = (name: string): Effect.Effect<string, MariaDbStartError> =>
  Effect.suspend(() => {
    for (const dir of binaryDirs()) {
      const candidate = path.join(dir, name)
      try {
        fs.accessSync(candidate, fs.constants.X_OK)
        return Effect.succeed(candidate)
      } catch {
        // try the next directory
      }
    }
    return Effect.fail(
      new MariaDbStartError({
        stage: "binaries",
        message: `${name} not found on PATH, /usr/sbin or /usr/bin (run scripts/setup.sh)`
      })
    )
  })

export const readTail = (file: string, bytes = 4000): string => {
  try {
    const fd = fs.openSync(file, "r")
    try {
      const size = fs.fstatSync(fd).size
      const start = Math.max(0, size - bytes)
      const buf = Buffer.alloc(size - start)
      fs.readSync(fd, buf, 0, buf.length, start)
      return buf.toString("utf8")
    } finally {
      fs.closeSync(fd)
    }
  } catch {
    return ""
  }
}

export const readFrom = (file: string, offset: number): string => {
  try {
    return fs.readFileSync(file).subarray(offset).toString("utf8")
  } catch {
    return ""
  }
}

export const fileSize = (file: string): number => {
  try {
    return fs.statSync(file).size
  } catch {
    return 0
  }
}

export interface Layout {
  readonly dir: string
  readonly dataDir: string
  readonly configFile: string
  readonly socket: string
  readonly pidFile: string
  readonly errorLog: string
  readonly binlogBase: string
  readonly relayLog: string
  readonly tmpDir: string
}

export const layoutOf = (dir: string): Layout => ({
  dir,
  dataDir: path.join(dir, "data"),
  configFile: path.join(dir, "my.cnf"),
  socket: path.join(dir, "mysqld.sock"),
  pidFile: path.join(dir, "mysqld.pid"),
  errorLog: path.join(dir, "error.log"),
  binlogBase: path.join(dir, "bin"),
  relayLog: path.join(dir, "relay"),
  tmpDir: path.join(dir, "tmp")
})

const renderConfig = (l: Layout, port: number, serverId: number, extra: ExtraConfig): string => {
  const lines: Array<string> = ["[mariadbd]"]
  if (isRoot()) lines.push(`user=${serverUser()?.name ?? "root"}`)
  lines.push(
    `datadir=${l.dataDir}`,
    `socket=${l.socket}`,
    `pid-file=${l.pidFile}`,
    // own temp dir: bootstraps sharing /tmp have lost each other's temp tables
    `tmpdir=${l.tmpDir}`,
    `port=${port}`,
    "bind-address=127.0.0.1",
    `log-error=${l.errorLog}`,
    "skip-name-resolve",
    `server_id=${serverId}`,
    `log_bin=${l.binlogBase}`,
    "binlog_format=ROW",
    "gtid_strict_mode=ON",
    "log_slave_updates=ON",
    "sync_binlog=1",
    "innodb_flush_log_at_trx_commit=1",
    `relay_log=${l.relayLog}`,
    "skip-slave-start",
    // a GTID reconnect scans the binlog file from its start
    "max_binlog_size=64M",
    // small footprint: several instances on a 2-core test machine
    "innodb_log_buffer_size=4M",
    "key_buffer_size=1M",
    "aria_pagecache_buffer_size=4M",
    "performance_schema=OFF"
  )
  // Sizes when the caller gives none (tests' throw-away servers); a node's managed server
  // gives its own (mariadb.bufferPoolMb, mariadb.maxConnections). Each option on one line.
  const given = new Set(Object.keys(extra).map((k) => k.toLowerCase().replace(/-/g, "_")))
  for (const [key, value] of [["innodb_buffer_pool_size", "32M"], ["innodb_log_file_size", "16M"], ["max_connections", "200"]] as const) {
    if (!given.has(key)) lines.push(`${key}=${value}`)
  }
  for (const [key, value] of Object.entries(extra)) {
    if (value === true) lines.push(key)
    else if (value !== false) lines.push(`${key}=${value}`)
  }
  return lines.join("\n") + "\n"
}

export const prepareDir = (l: Layout) =>
  Effect.try({
    try: () => fs.mkdirSync(l.tmpDir, { recursive: true }),
    catch: (cause) =>
      new MariaDbStartError({ stage: "tempdir", message: `mkdir ${l.tmpDir} failed: ${String(cause)}`, dir: l.dir, cause })
  })

export const writeConfig = (l: Layout, port: number, serverId: number, extra: ExtraConfig) =>
  Effect.try({
    try: () => fs.writeFileSync(l.configFile, renderConfig(l, port, serverId, extra)),
    catch: (cause) =>
      new MariaDbStartError({ stage: "config", message: `cannot write ${l.configFile}: ${String(cause)}`, dir: l.dir, cause })
  })

const isEmptyOrMissing = (dir: string): boolean => {
  try {
    return fs.readdirSync(dir).length === 0
  } catch {
    return true
  }
}

/**
 * The environment of every MariaDB program the agent starts (mariadbd, mariadb-install-db,
 * mariadb-backup, mbstream): the agent's, less glibc's malloc settings (MALLOC_*), which are
 * tuned for the agent's large buffers (docs/operations.md, "Memory"), not for the server's
 * threads: inherited, they made mariadbd fault in fresh memory for every large row.
 */
export const mariadbEnv = (): NodeJS.ProcessEnv =>
  Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("MALLOC_")))

const runInstallDb = (installDbBin: string, l: Layout) =>
  Effect.callback<void, MariaDbStartError>((resume) => {
    const child = execFile(
      installDbBin,
      [
        `--defaults-file=${l.configFile}`,
        "--skip-test-db",
        ...(serverUser() !== undefined ? [`--user=${serverUser()!.name}`] : []),
        // The all-privilege socket login goes to the OS user the agent logs in as. Left to itself
        // install-db takes $USER, which a process started with another uid (setpriv, su) still carries.
        ...(isRoot() ? [] : [`--auth-root-socket-user=${adminUser()}`])
      ],
      { timeout: 120_000, maxBuffer: 8 * 1024 * 1024, env: mariadbEnv() },
      (error, stdout, stderr) => {
        if (error === null) return resume(Effect.void)
        const output = `${stdout}\n${stderr}`.slice(-3000)
        resume(
          Effect.fail(
            new MariaDbStartError({
              stage: "install",
              message: `mariadb-install-db failed (${error.code ?? error.signal ?? error.message})`,
              dir: l.dir,
              logTail: `${output}\n--- ${l.errorLog} ---\n${readTail(l.errorLog, 2000)}`,
              cause: error
            })
          )
        )
      }
    )
    return Effect.sync(() => {
      if (child.exitCode === null) child.kill("SIGKILL")
    })
  })

/**
 * First start only (no `data/mysql` yet). A failed install into a fresh
 * datadir is wiped, so the next start installs again instead of finding a
 * half-made `data/mysql`.
 */
export const installIfNeeded = (installDbBin: string, l: Layout) =>
  Effect.suspend(() => {
    if (fs.existsSync(path.join(l.dataDir, "mysql"))) return Effect.void
    const fresh = isEmptyOrMissing(l.dataDir)
    return runInstallDb(installDbBin, l).pipe(
      Effect.onError(() =>
        Effect.sync(() => {
          if (fresh) fs.rmSync(l.dataDir, { recursive: true, force: true })
        })
      )
    )
  })
