/**
 * A cluster of node processes on this machine (loopback), for tests, benchmarks and the
 * demo. Each node is `node dist/main.js node --config FILE` in a child process; all of
 * them are killed and their directory removed when the scope closes.
 */
import { Data, Effect, Exit, Schedule } from "effect"
import { type ChildProcess, spawn } from "node:child_process"
import { chmodSync, cpSync, createWriteStream, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs"
import { randomBytes } from "node:crypto"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { basename, dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import type { NodeConfig } from "../config/NodeConfig.js"
import { killStaleServer } from "../services/database/MariaDbProcess.js"
import * as Certificates from "../services/tls/Certificates.js"

export class LocalClusterError extends Data.TaggedError("LocalClusterError")<{
  readonly nodeId?: number
  readonly message: string
}> {}

export interface LocalNode {
  readonly nodeId: number
  /** The address its ports listen on (and its outgoing peer connections come from). */
  readonly host: string
  readonly peerPort: number
  readonly adminPort: number
  /** With a database: the proxy's client ports and the node's own MariaDB. */
  readonly rwPort?: number | undefined
  readonly roPort?: number | undefined
  readonly mariadb?: {
    readonly port: number
    readonly socket: string
    readonly pidFile: string
    /** The agent's binlog server (loopback), which its MariaDB replicates from. */
    readonly binlogServerPort: number
  } | undefined
  readonly forwardRwPort?: number | undefined
  readonly forwardRoPort?: number | undefined
  readonly dir: string
  readonly configPath: string
  /** The running process's pid, or undefined while it is down. */
  readonly pid: () => number | undefined
  /** The last output the process wrote (stdout and stderr, up to 4 MiB), for diagnostics; all of it is in `nodeN/agent.log`. */
  readonly output: () => string
  /** Sends a signal and waits (bounded) until the process has exited. */
  readonly kill: (signal?: NodeJS.Signals) => Effect.Effect<void>
  /** Starts the process again on the same config and data; waits until it is ready. */
  readonly start: Effect.Effect<void, LocalClusterError>
}

export interface LocalCluster {
  readonly dir: string
  readonly clusterId: string
  /** The admin token every node's config carries (`admin.token`): mutating admin calls need it. */
  readonly adminToken: string
  readonly nodes: ReadonlyArray<LocalNode>
  /**
   * A new node (not started): its config names itself and the cluster's first node only
   * (it learns the rest from the log) and it starts with --join. Add it with `member add`
   * (its `member` fields are what to pass); it is stopped with the cluster.
   */
  readonly addNode: (nodeId: number) => Effect.Effect<{ readonly node: LocalNode; readonly member: NodeConfig["members"][number] }>
}

export interface LocalClusterOptions {
  readonly nodes: number
  readonly clusterId?: string
  /** Mutual TLS between the agents: a CA and node certificates made in `dir/tls` (`certs`). */
  readonly tls?: boolean
  /** With `tls` and a database: clients over TLS too (`mariadb.ssl` = `dir/tls/server.crt`, naming every node's address); "required": plain logins refused (`ssl.require`). */
  readonly clientTls?: boolean | "required"
  /** The cluster's admin token (default: 24 random bytes, hex). */
  readonly adminToken?: string
  /** false: GET /status needs the admin token (`admin.openStatus`). */
  readonly openStatus?: boolean
  /** One address for all nodes (default 127.0.0.1), or "per-node": 127.0.0.11, .12, ... (for partitions). */
  readonly host?: string | "per-node"
  /** Keep the directory after the scope closes (e.g. to inspect a failure). */
  readonly keepDir?: boolean
  readonly paxos?: NodeConfig["paxos"]
  readonly lease?: NodeConfig["lease"]
  /** Give every node a managed MariaDB and proxy ports. */
  readonly database?: boolean | {
    readonly extraConfig?: Record<string, string | number | boolean>
    /** `mariadb.maxTransactionMb` of every node. */
    readonly maxTransactionMb?: number
    /** `rebuild.auto` of every node (default true). */
    readonly rebuildAuto?: boolean
    /** `mariadb.bufferPoolMb` of every node; default 32 (several servers on one machine), not the config's half of memory. */
    readonly bufferPoolMb?: number
    /**
     * `mariadb.maxConnections` of every node, and `proxy.maxConnections` (per listener: the
     * config refuses more than MariaDB takes); default 200.
     */
    readonly maxConnections?: number
    /** `mariadb.characterSet` / `mariadb.collation` of every node (default: the config's, utf8mb4). */
    readonly characterSet?: string
    readonly collation?: string
  }
  /** `log` (retention) of every node. */
  readonly log?: NodeConfig["log"]
  /** Use this directory (created if missing, never removed) instead of a temp one. */
  readonly dir?: string
  /** Extra arguments for each node's `node` process (e.g. `--cpu-prof`). */
  readonly nodeArgs?: ReadonlyArray<string>
  /** The CLI script each agent runs (default: this package's dist/main.js). */
  readonly agentEntry?: string
}

/**
 * V8 settings every agent runs with (README: running a node; docs/operations.md, "Memory").
 * A young generation of 2 x 4 MiB instead of V8's 2 x 16 MiB: the agent's garbage is
 * short-lived messages, and the big default let V8 promote and grow the old space to over
 * 100 MiB under load (bench:cluster: master agent RSS 240-310 MB with the default, 185 MB
 * with this, same TPS and CPU per transaction). An old generation allowed 80 MiB before
 * V8 collects it: an agent holds about 40 MiB, and V8's own limit left 12 MiB of slack, which
 * the buffers of large transactions (counted there once promoted) filled several times a
 * second, each time a full mark-compact (1 MiB rows: 7 a second on the master, 45 % of
 * its CPU; with this, 3.5 and half the CPU per transaction, the same RSS).
 */
export const AGENT_NODE_ARGS: ReadonlyArray<string> = ["--max-semi-space-size=4", "--initial-old-space-size=80"]

/**
 * The agents' environment (docs/operations.md, "Memory"): glibc's bound for mapping
 * buffers straight from the OS fixed at 4 MiB. By default it rises to the largest buffer
 * freed so far, so the parts of a large transaction stayed in its heap after use (+260 MB
 * RSS over a 100 MB transaction); at 128 KiB every 2 MiB part and frame was a fresh mapping
 * (page faults and zeroing on every node: a third slower).
 */
export const AGENT_ENV: Readonly<Record<string, string>> = { MALLOC_MMAP_THRESHOLD_: "4194304" }

/**
 * The CLI each agent runs: next to this module once compiled (dist/testing -> dist/main.js),
 * or the package's build when this runs from TypeScript source (src/testing -> dist/main.js).
 */
const defaultAgentEntry = (): string | undefined =>
  [new URL("../main.js", import.meta.url), new URL("../../dist/main.js", import.meta.url)]
    .map((url) => fileURLToPath(url))
    .find((path) => existsSync(path))

/** Handed out by this process already: never twice. */
const handedOut = new Set<number>()

/**
 * Ports handed out by other processes on this machine (parallel test workers, benches)
 * are reserved by a file naming the owner's pid: a port is free to take when no file
 * exists or its owner is gone. Binding alone cannot tell, between the check and the node's
 * own bind, that another process picked the same port.
 */
const reservations = join(tmpdir(), "phxmaria-ports")
const alive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM"
  }
}
const reserve = (port: number): boolean => {
  const file = join(reservations, String(port))
  try {
    mkdirSync(reservations, { recursive: true })
    writeFileSync(file, String(process.pid), { flag: "wx" })
    return true
  } catch {
    try {
      const owner = Number(readFileSync(file, "utf8"))
      if (owner === process.pid || (Number.isInteger(owner) && owner > 0 && alive(owner))) return false
      // The owner is gone: take it over (a race with another taker is settled by the rename).
      const mine = `${file}.${process.pid}`
      writeFileSync(mine, String(process.pid))
      renameSync(mine, file)
      return Number(readFileSync(file, "utf8")) === process.pid
    } catch {
      return false
    }
  }
}

const bindable = (host: string, port: number): Effect.Effect<boolean> =>
  Effect.callback<boolean>((resume) => {
    const server = createServer()
    server.once("error", () => resume(Effect.succeed(false)))
    server.listen(port, host, () => server.close(() => resume(Effect.succeed(true))))
  })

/**
 * A port free on `host` now, below the kernel's ephemeral range (32768 and up on Linux):
 * there no outgoing connection can take it between now and when a node binds it.
 */
export const freePort = (host = "127.0.0.1"): Effect.Effect<number, LocalClusterError> =>
  Effect.gen(function*() {
    for (let attempt = 0; attempt < 200; attempt++) {
      const port = 20_000 + Math.floor(Math.random() * 12_000)
      if (handedOut.has(port) || !reserve(port)) continue
      if (yield* bindable(host, port)) {
        handedOut.add(port)
        return port
      }
    }
    return yield* new LocalClusterError({ message: `no free port on ${host} in 20000-31999` })
  })

/**
 * Where the logs of a cluster whose scope failed (a failed test) are copied, when set: a
 * failure seen only on a loaded CI machine can then be read (.ci/run prints a digest).
 */
const FAILED_LOGS_ENV = "PHXMARIA_FAILED_LOGS"
const LOG_FILES = new Set(["agent.log", "error.log"])

const keepLogsOfFailure = (dir: string) => {
  const into = process.env[FAILED_LOGS_ENV]
  if (into === undefined || into === "") return
  try {
    cpSync(dir, join(into, basename(dir)), {
      recursive: true,
      filter: (from) => {
        const st = lstatSync(from)
        return st.isDirectory() || (st.isFile() && LOG_FILES.has(basename(from)))
      }
    })
  } catch {
    // Diagnostics only: a copy that fails must not hide the test's own failure.
  }
}

const READY_TIMEOUT_MS = 60_000
/** Output kept in memory per agent (about; the log file has all of it). */
const OUTPUT_KEPT_CHARS = 4 * 1024 * 1024

/** SIGKILLs the node's mariadbd if it outlived its agent (the agent was SIGKILLed). */
export const killOrphanMariaDb = (node: LocalNode): Effect.Effect<void> =>
  node.mariadb === undefined ? Effect.void : killStaleServer(join(dirname(node.mariadb.pidFile), "my.cnf"))

export const make = Effect.fnUntraced(function*(options: LocalClusterOptions) {
  const hostOf = (nodeId: number) => options.host === "per-node" ? `127.0.0.${10 + nodeId}` : options.host ?? "127.0.0.1"
  const clusterId = options.clusterId ?? "local"
  const adminToken = options.adminToken ?? randomBytes(24).toString("hex")
  const mainJs = options.agentEntry ?? defaultAgentEntry()
  if (mainJs === undefined) return yield* new LocalClusterError({ message: "dist/main.js not found: run `npm run build` first" })
  const given = options.dir
  const dir = given !== undefined
    ? (mkdirSync(given, { recursive: true }), given)
    : yield* Effect.acquireRelease(
      // 0711: a mariadbd run as `mysql` (the agents are root) must pass through; nobody may list it.
      Effect.sync(() => {
        const d = mkdtempSync(join(tmpdir(), "phxmaria-cluster-"))
        chmodSync(d, 0o711)
        return d
      }),
      (d, exit) =>
        Effect.sync(() => {
          if (Exit.isFailure(exit)) keepLogsOfFailure(d)
          if (!options.keepDir) rmSync(d, { recursive: true, force: true })
        })
    )
  const withDb = options.database !== undefined && options.database !== false
  const members: Array<NodeConfig["members"][number]> = []
  const databases = new Map<number, { readonly port: number; readonly binlogServerPort: number }>()
  for (let i = 0; i < options.nodes; i++) {
    const host = hostOf(i + 1)
    const base = { nodeId: i + 1, host, port: yield* freePort(host), adminPort: yield* freePort(host) }
    if (!withDb) {
      members.push(base)
      continue
    }
    members.push({
      ...base,
      rwPort: yield* freePort(host),
      roPort: yield* freePort(host),
      forwardRwPort: yield* freePort(host),
      forwardRoPort: yield* freePort(host)
    })
    databases.set(i + 1, { port: yield* freePort(), binlogServerPort: yield* freePort() })
  }
  const tlsDir = join(dir, "tls")
  const issueCerts = (ids: ReadonlyArray<number>, server: boolean) =>
    options.tls !== true ? Effect.void : Certificates.issue({
      dir: tlsDir,
      clusterId,
      nodes: ids,
      hosts: new Map(ids.map((id) => [id, [hostOf(id)]])),
      server
    }).pipe(Effect.mapError((e) => new LocalClusterError({ message: e.message })), Effect.asVoid)
  yield* issueCerts(members.map((m) => m.nodeId), options.clientTls !== undefined && options.clientTls !== false)
  const extraConfig = typeof options.database === "object" ? options.database.extraConfig : undefined
  const maxTransactionMb = typeof options.database === "object" ? options.database.maxTransactionMb : undefined
  const rebuildAuto = typeof options.database === "object" ? options.database.rebuildAuto : undefined
  // Small servers: the demo, tests and benches run several on one machine.
  const bufferPoolMb = (typeof options.database === "object" ? options.database.bufferPoolMb : undefined) ?? 32
  const maxConnections = (typeof options.database === "object" ? options.database.maxConnections : undefined) ?? 200
  const characterSet = typeof options.database === "object" ? options.database.characterSet : undefined
  const collation = typeof options.database === "object" ? options.database.collation : undefined

  const makeNode = (nodeId: number, peerPort: number, adminPort: number, joining = false): LocalNode => {
    const nodeDir = join(dir, `node${nodeId}`)
    // 0711: a mariadbd run as `mysql` passes through to its dir under data/ (the files here are 0600).
    mkdirSync(nodeDir, { recursive: true, mode: 0o711 })
    chmodSync(nodeDir, 0o711)
    const configPath = join(nodeDir, "config.json")
    const database = databases.get(nodeId)
    const config: NodeConfig = {
      clusterId,
      nodeId,
      dataDir: join(nodeDir, "data"),
      // A joiner knows itself and one member; the log tells it the rest.
      members: joining ? [members.find((m) => m.nodeId === nodeId)!, members[0]!] : members.filter((m) => !joiners.has(m.nodeId)),
      admin: { token: adminToken, ...(options.openStatus !== undefined ? { openStatus: options.openStatus } : {}) },
      ...(options.tls === true
        ? { tls: { ca: join(tlsDir, "ca.crt"), cert: join(tlsDir, `node-${nodeId}.crt`), key: join(tlsDir, `node-${nodeId}.key`) } }
        : {}),
      ...(options.paxos !== undefined ? { paxos: options.paxos } : {}),
      ...(options.lease !== undefined ? { lease: options.lease } : {}),
      ...(rebuildAuto !== undefined ? { rebuild: { auto: rebuildAuto } } : {}),
      ...(options.log !== undefined ? { log: options.log } : {}),
      ...(database !== undefined ? { proxy: { maxConnections } } : {}),
      ...(database !== undefined
        ? {
          mariadb: {
            ...database,
            bufferPoolMb,
            maxConnections,
            ...(characterSet !== undefined ? { characterSet } : {}),
            ...(collation !== undefined ? { collation } : {}),
            ...(extraConfig !== undefined ? { extraConfig } : {}),
            ...(maxTransactionMb !== undefined ? { maxTransactionMb } : {}),
            ...(options.tls === true && options.clientTls !== undefined && options.clientTls !== false
              ? { ssl: { cert: join(tlsDir, "server.crt"), key: join(tlsDir, "server.key"), ...(options.clientTls === "required" ? { require: true } : {}) } }
              : {})
          }
        }
        : {})
    }
    const mariadbDir = join(nodeDir, "data", "mariadb")
    const member = members.find((m) => m.nodeId === nodeId)!
    // It holds the admin token.
    writeFileSync(configPath, JSON.stringify(config, null, 2), { mode: 0o600 })
    let child: ChildProcess | undefined
    let output = ""
    let startedBefore = false

    const exited = (c: ChildProcess) => c.exitCode !== null || c.signalCode !== null

    const kill = (signal: NodeJS.Signals = "SIGKILL") =>
      Effect.callback<void>((resume) => {
        const c = child
        if (c === undefined || exited(c)) {
          child = undefined
          return resume(Effect.void)
        }
        c.once("exit", () => resume(Effect.void))
        // A stopped (SIGSTOP) process handles nothing but SIGKILL until it is continued.
        if (signal !== "SIGKILL") c.kill("SIGCONT")
        c.kill(signal)
      }).pipe(
        Effect.timeoutOption("5 seconds"),
        Effect.andThen(Effect.sync(() => {
          if (child !== undefined && !exited(child)) child.kill("SIGKILL")
          child = undefined
        }))
      )

    const start = Effect.callback<void, LocalClusterError>((resume) => {
      // The first start founds the cluster; a later one must find its state (or refuse).
      const founding = !startedBefore && !joining
      startedBefore = true
      const args = [
        ...AGENT_NODE_ARGS,
        ...(options.nodeArgs ?? []),
        mainJs,
        "node",
        "--config",
        configPath,
        ...(founding ? ["--bootstrap"] : []),
        ...(joining ? ["--join"] : [])
      ]
      const c = spawn(process.execPath, args, {
        stdio: ["ignore", "pipe", "pipe"],
        env: { ...AGENT_ENV, ...process.env }
      })
      child = c
      let ready = false
      let line = ""
      const logFile = createWriteStream(join(nodeDir, "agent.log"), { flags: "a", mode: 0o600 })
      c.once("exit", () => logFile.end())
      const keep = (text: string) => {
        logFile.write(text)
        output += text
        if (output.length > 2 * OUTPUT_KEPT_CHARS) output = output.slice(-OUTPUT_KEPT_CHARS)
      }
      c.stdout!.on("data", (chunk: Buffer) => {
        const text = chunk.toString()
        keep(text)
        if (ready) return
        line += text
        if (line.includes(`"event":"ready"`)) {
          ready = true
          resume(Effect.void)
        }
      })
      c.stderr!.on("data", (chunk: Buffer) => keep(chunk.toString()))
      c.once("exit", (code, signal) => {
        if (!ready) resume(Effect.fail(new LocalClusterError({ nodeId, message: `exited (${code ?? signal}) before ready: ${output.slice(-2000)}` })))
      })
    }).pipe(
      Effect.timeoutOrElse({
        duration: `${READY_TIMEOUT_MS} millis`,
        orElse: () => Effect.fail(new LocalClusterError({ nodeId, message: `not ready within ${READY_TIMEOUT_MS} ms: ${output.slice(-2000)}` }))
      })
    )

    return {
      nodeId,
      host: member.host,
      peerPort,
      adminPort,
      rwPort: member.rwPort,
      roPort: member.roPort,
      mariadb: database === undefined
        ? undefined
        : {
          port: database.port,
          socket: join(mariadbDir, "mysqld.sock"),
          pidFile: join(mariadbDir, "mysqld.pid"),
          binlogServerPort: database.binlogServerPort
        },
      forwardRwPort: member.forwardRwPort,
      forwardRoPort: member.forwardRoPort,
      dir: nodeDir,
      configPath,
      pid: () => child?.pid,
      output: () => output,
      kill,
      start
    }
  }

  const joiners = new Set<number>()
  const nodes = members.map((m) => makeNode(m.nodeId, m.port, m.adminPort))
  const added: Array<LocalNode> = []
  // Stop every process when the scope closes, whatever happened (SIGKILL if SIGTERM is not
  // enough), and any mariadbd an agent killed with SIGKILL left behind.
  yield* Effect.addFinalizer(() =>
    Effect.forEach([...nodes, ...added], (n) => Effect.andThen(n.kill("SIGTERM"), killOrphanMariaDb(n)), { concurrency: "unbounded", discard: true })
  )
  yield* Effect.forEach(nodes, (n) => n.start, { concurrency: "unbounded", discard: true })
  const addNode = (nodeId: number) =>
    Effect.gen(function*() {
      const host = hostOf(nodeId)
      const base = { nodeId, host, port: yield* freePort(host), adminPort: yield* freePort(host) }
      const member: NodeConfig["members"][number] = !withDb ? base : {
        ...base,
        rwPort: yield* freePort(host),
        roPort: yield* freePort(host),
        forwardRwPort: yield* freePort(host),
        forwardRoPort: yield* freePort(host)
      }
      if (withDb) databases.set(nodeId, { port: yield* freePort(), binlogServerPort: yield* freePort() })
      yield* issueCerts([nodeId], false)
      members.push(member)
      joiners.add(nodeId)
      const node = makeNode(nodeId, member.port, member.adminPort, true)
      added.push(node)
      return { node, member }
    }).pipe(Effect.orDie)
  return { dir, clusterId, adminToken, nodes, addNode } satisfies LocalCluster
})

/** Polls `check` until it returns true, up to `timeoutMs`. */
export const waitFor = <E, R>(
  what: string,
  check: Effect.Effect<boolean, E, R>,
  timeoutMs: number
): Effect.Effect<void, E | LocalClusterError, R> =>
  check.pipe(
    Effect.repeat({ schedule: Schedule.spaced("50 millis"), until: (ok) => ok }),
    Effect.asVoid,
    Effect.timeoutOrElse({
      duration: `${timeoutMs} millis`,
      orElse: () => Effect.fail(new LocalClusterError({ message: `timed out after ${timeoutMs} ms waiting for ${what}` }))
    })
  )
