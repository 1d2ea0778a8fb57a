/** A node's configuration (a JSON or YAML file, or data from an embedding app), validated with Schema. */
import {
  collationBelongsTo,
  DEFAULT_CHARACTER_SET,
  DEFAULT_MAX_CONNECTIONS,
  firstClassServerOptions,
  isCharsetName,
  malformedServerOptions,
  protectedServerOptions
} from "../domain/mysql/serverOptions.js"
import { closestName } from "../domain/suggest.js"
import { isHostSyntax } from "../domain/wire/address.js"
import { Data, Effect, Result, Schema, SchemaAST, SchemaIssue } from "effect"
import { readFileSync } from "node:fs"
import { parse as parseYaml } from "yaml"
import { defaultLeaseConfig, type LeaseConfig } from "../domain/cluster/lease.js"
import * as PeerTls from "../services/tls/PeerTls.js"

/** A whole number from `minimum` to `maximum`. */
const IntIn = (minimum: number, maximum: number) => Schema.Int.pipe(Schema.check(Schema.isBetween({ minimum, maximum })))
const NonEmpty = Schema.String.pipe(Schema.check(Schema.isMinLength(1)))
const Port = IntIn(1, 65535)
/**
 * Node ids are MariaDB server ids, below the ones the agent derives: a master term's
 * 1,000,000 + epoch (a replica whose own id met it would skip that term's events), the
 * binlog server's 2,000,000 + id, the captures' 3,000,000 + id.
 */
export const MAX_NODE_ID = 999_999
const NodeId = IntIn(1, MAX_NODE_ID)
/** An IP address or a host name; names are resolved where they are compared with a peer's address (HostAddresses). */
const Host = Schema.String.pipe(Schema.check(Schema.makeFilter<string>((h) =>
  isHostSyntax(h) || `expected an IP address or a host name (RFC 1123), got ${JSON.stringify(h.slice(0, 80))}`
)))
const CharsetName = Schema.String.pipe(Schema.check(Schema.makeFilter<string>((n) =>
  isCharsetName(n) || `expected a MariaDB name (letters, digits, _), got ${JSON.stringify(n.slice(0, 80))}`
)))

export const MemberConfig = Schema.Struct({
  nodeId: NodeId,
  host: Host,
  /** Peer (Paxos) port. */
  port: Port,
  /** Admin HTTP port (GET /status). */
  adminPort: Port,
  /** Client ports (read-write, read-only) and the forward ports other members relay to. */
  rwPort: Schema.optional(Port),
  roPort: Schema.optional(Port),
  forwardRwPort: Schema.optional(Port),
  forwardRoPort: Schema.optional(Port)
})
export type MemberConfig = typeof MemberConfig.Type

/** This node's MariaDB: managed (the agent owns mariadbd) or attached (the operator runs it). */
export const MariaDbSettings = Schema.Struct({
  mode: Schema.optional(Schema.Literals(["managed", "attach"])),
  /** Loopback TCP port of the local MariaDB (only this node's agent connects to it). */
  port: Port,
  /** Attach mode: how the agent logs in as an administrator. */
  socket: Schema.optional(NonEmpty),
  user: Schema.optional(NonEmpty),
  password: Schema.optional(Schema.String),
  /** Loopback port of this node's binlog server, which its MariaDB replicates from. */
  binlogServerPort: Port,
  /** The largest transaction the cluster takes, in MiB (MariaDB's max_binlog_cache_size); default 1024. */
  maxTransactionMb: Schema.optional(IntIn(1, 1024 * 1024)),
  /**
   * Managed: innodb_buffer_pool_size in MiB. Default: half the machine's memory, rounded
   * down to a multiple of 128, at least 128 (a machine given to the database).
   */
  bufferPoolMb: Schema.optional(IntIn(32, 4 * 1024 * 1024)),
  /**
   * Managed: the client connections MariaDB takes (every relay the proxy opens to it counts);
   * its max_connections is this plus AGENT_CONNECTIONS for the agent's own logins. Default 1000.
   */
  maxConnections: Schema.optional(IntIn(10, 100_000)),
  /** character_set_server; default utf8mb4 (managed; attach: SET GLOBAL when given). */
  characterSet: Schema.optional(CharsetName),
  /** collation_server, of the character set; default utf8mb4_general_ci with utf8mb4, else the set's own default. */
  collation: Schema.optional(CharsetName),
  /** Extra my.cnf lines for a managed server (true = a bare flag). */
  extraConfig: Schema.optional(Schema.Record(Schema.String, Schema.Union([Schema.String, Schema.Number, Schema.Boolean]))),
  /**
   * Clients over TLS (docs/operations.md, "Client TLS"): PEM files of the certificate
   * clients see (naming every member's address; `certs` makes `server.crt`) and its key.
   * A managed MariaDB gets them as ssl_cert/ssl_key; the proxy ends clients' TLS with them.
   * `require`: the RW and RO ports refuse a login without TLS, and a managed MariaDB gets
   * require_secure_transport (TCP logins to it need TLS; the agent's own use its socket).
   */
  ssl: Schema.optional(Schema.Struct({ cert: NonEmpty, key: NonEmpty, require: Schema.optional(Schema.Boolean) }))
})
export type MariaDbSettings = typeof MariaDbSettings.Type

export const ProxySettings = Schema.Struct({
  /** Address the client and forward ports listen on; default: this member's host. */
  listenHost: Schema.optional(Host),
  proxyProtocol: Schema.optional(Schema.Literals(["v1", "v2", "off"])),
  connectTimeoutMs: Schema.optional(IntIn(100, 600_000)),
  /** Connections per listener (RW, RO, forward RW, forward RO); default 1000. */
  maxConnections: Schema.optional(IntIn(1, 100_000)),
  /** With no replica readable, send RO connections to the master; default true. */
  roFallbackToMaster: Schema.optional(Schema.Boolean)
})

export const LeaseSettings = Schema.Struct({
  leaseMs: Schema.optional(IntIn(200, 60_000)),
  renewEveryMs: Schema.optional(IntIn(1, 60_000)),
  marginMs: Schema.optional(IntIn(0, 30_000))
})

/** Bounds around the defaults of src/domain/paxos/core.ts and PaxosLog (1024, 1 MiB, 4, 25 ms, 10 s). */
export const PaxosTuning = Schema.Struct({
  batchMaxCount: Schema.optional(IntIn(1, 65_536)),
  /** At most 32 MiB: a batch travels in one frame (64 MiB at most). */
  batchMaxBytes: Schema.optional(IntIn(1024, 32 * 1024 * 1024)),
  maxInflight: Schema.optional(IntIn(1, 64)),
  tickMs: Schema.optional(IntIn(1, 10_000)),
  proposeTimeoutMs: Schema.optional(IntIn(100, 600_000)),
  /** Take proposals from PaxosClient connections on the peer port (a log-only cluster; refused with mariadb). */
  acceptClients: Schema.optional(Schema.Boolean)
})

export const NodeConfig = Schema.Struct({
  clusterId: NonEmpty,
  nodeId: NodeId,
  dataDir: NonEmpty,
  members: Schema.Array(MemberConfig).pipe(Schema.check(Schema.isMinLength(1))),
  /**
   * This start may found a new cluster: the node may start with no Paxos state. Without
   * it a node with none refuses to start (its state may have been lost). CLI: --bootstrap.
   */
  bootstrap: Schema.optional(Schema.Boolean),
  /**
   * This node joins a running cluster (`member add`): it may start with no Paxos state, and
   * `members` need name only itself and one existing member; it learns the rest from the
   * log, and votes only once the log makes it a voter. CLI: --join.
   */
  join: Schema.optional(Schema.Boolean),
  paxos: Schema.optional(PaxosTuning),
  lease: Schema.optional(LeaseSettings),
  /**
   * Mutual TLS between agents (docs/operations.md, "Peer TLS"): PEM files of the cluster's
   * CA, and of this node's certificate (naming node-<nodeId>) and key. `certs` makes them.
   */
  tls: Schema.optional(Schema.Struct({ ca: NonEmpty, cert: NonEmpty, key: NonEmpty })),
  /** Without it the node runs the log and the lease only (no database, no proxy). */
  mariadb: Schema.optional(MariaDbSettings),
  /**
   * Retention (docs/operations.md, "Storage"). The Paxos log keeps what every live member
   * still reads plus a tail of at most `retainMb` (default 1024) and `retainSeconds`
   * (default 86400); a managed MariaDB's own binlog is purged to the same bounds.
   * `segmentMb` (default 64): the log's file size, the step compaction deletes by.
   */
  log: Schema.optional(Schema.Struct({
    retainMb: Schema.optional(IntIn(1, 16 * 1024 * 1024)),
    retainSeconds: Schema.optional(IntIn(1, 10 * 365 * 86_400)),
    segmentMb: Schema.optional(IntIn(1, 1024))
  })),
  /**
   * The admin HTTP port (docs/operations.md, "Admin HTTP"): every call that changes
   * something, and GET /backup, needs the cluster's admin token (the same on every node),
   * given here or in a file (mode 0600) that holds only it. `openStatus: false`: GET
   * /status needs it too (it names the cluster, its members and its master).
   */
  admin: Schema.optional(Schema.Struct({
    token: Schema.optional(Schema.String.pipe(Schema.check(Schema.isMinLength(16)))),
    tokenFile: Schema.optional(NonEmpty),
    openStatus: Schema.optional(Schema.Boolean)
  })),
  /** A diverged managed server is set aside and rebuilt from the chosen log (`auto`, default true). */
  rebuild: Schema.optional(Schema.Struct({ auto: Schema.optional(Schema.Boolean) })),
  proxy: Schema.optional(ProxySettings)
})
export type NodeConfig = typeof NodeConfig.Type

export class ConfigFileError extends Data.TaggedError("ConfigFileError")<{
  readonly path: string
  readonly message: string
}> {}

/** One thing wrong with a config: where (`mariadb.port`, `members[1].host`) and what. */
export interface ConfigProblem {
  readonly path: string
  readonly message: string
}

/** One problem on a line; several under a count, each as `- path: problem`. */
export const formatProblems = (problems: ReadonlyArray<ConfigProblem>): string => {
  const line = (p: ConfigProblem) => `${p.path === "" ? "config" : p.path}: ${p.message}`
  return problems.length === 1 ? line(problems[0]!) : [`${problems.length} problems:`, ...problems.map((p) => `- ${line(p)}`)].join("\n")
}

/** `["members", 0, "port"]` as `members[0].port`. */
const formatPath = (path: ReadonlyArray<PropertyKey | { readonly key: PropertyKey }>): string =>
  path.reduce<string>((at, segment) => {
    const key = typeof segment === "object" ? segment.key : segment
    return typeof key === "number" ? `${at}[${key}]` : at === "" ? String(key) : `${at}.${String(key)}`
  }, "")

/** Marks an unknown key's message, with the keys its object knows (completed once its path is known). */
const UNKNOWN_KEY = "\u0000unknown key\u0000"

const formatIssue = SchemaIssue.makeFormatterStandardSchemaV1({
  leafHook: (issue) =>
    issue._tag === "UnexpectedKey"
      ? UNKNOWN_KEY + (SchemaAST.isObjects(issue.ast) ? issue.ast.propertySignatures.map((p) => String(p.name)).join(",") : "")
      : issue._tag === "MissingKey"
      ? "missing (required)"
      : SchemaIssue.defaultLeafHook(issue)
})

/** The schema's problems, every one of them: unknown keys (with the key meant, when obvious), types, bounds. */
const schemaProblems = (issue: SchemaIssue.Issue): ReadonlyArray<ConfigProblem> =>
  formatIssue(issue).issues.map((i) => {
    const path = formatPath(i.path ?? [])
    if (!i.message.startsWith(UNKNOWN_KEY)) return { path, message: i.message }
    const known = i.message.slice(UNKNOWN_KEY.length).split(",").filter((k) => k.length > 0)
    const last = i.path?.[i.path.length - 1]
    const key = String(typeof last === "object" ? last.key : last)
    const meant = closestName(key, known)
    return {
      path,
      message: meant !== undefined ? `unknown key (did you mean ${meant}?)` : `unknown key (known here: ${known.join(", ")})`
    }
  })

/** A parsed config as it came, before the schema vouched for it: the checks across fields read it warily. */
type Raw = Readonly<Record<string, unknown>>
const record = (u: unknown): Raw | undefined => (typeof u === "object" && u !== null && !Array.isArray(u) ? (u as Raw) : undefined)
const int = (u: unknown): number | undefined => (typeof u === "number" && Number.isInteger(u) ? u : undefined)
const text = (u: unknown): string | undefined => (typeof u === "string" ? u : undefined)

/**
 * The checks across fields (safety rules among them), on the config as given: each runs
 * when the fields it reads have the right types (the schema reports the others), so one
 * pass reports every problem.
 */
const crossFieldProblems = (input: unknown): Effect.Effect<ReadonlyArray<ConfigProblem>> =>
  Effect.gen(function*() {
    const problems: Array<ConfigProblem> = []
    const problem = (path: string, message: string) => problems.push({ path, message })
    const root = record(input)
    if (root === undefined) return problems
    const nodeId = int(root.nodeId)
    const members = Array.isArray(root.members) ? root.members.map(record) : undefined
    const ids = members?.map((m) => int(m?.nodeId))
    if (nodeId !== undefined && ids !== undefined && ids.every((id) => id !== undefined) && !ids.includes(nodeId)) {
      problem("nodeId", `node ${nodeId} is not among members (${ids.join(", ")})`)
    }
    const known = (ids ?? []).filter((id): id is number => id !== undefined)
    const duplicates = [...new Set(known.filter((id, i) => known.indexOf(id) !== i))]
    if (duplicates.length > 0) problem("members", `duplicate nodeId ${duplicates.join(", ")}`)

    const mariadb = record(root.mariadb)
    const paxos = record(root.paxos)
    const proxy = record(root.proxy)
    if (mariadb !== undefined) {
      members?.forEach((m, i) => {
        if (m === undefined) return
        const missing = (["rwPort", "roPort", "forwardRwPort", "forwardRoPort"] as const).filter((k) => m[k] === undefined)
        if (missing.length > 0) problem(`members[${i}]`, `with mariadb set, every member needs proxy ports: missing ${missing.join(", ")}`)
      })
      const attach = mariadb.mode === "attach"
      if (attach && mariadb.user === undefined) problem("mariadb.user", "mode attach needs mariadb.user (and password or socket)")
      if (attach) {
        // The operator's server: its memory and connection sizing are set where it runs.
        if (mariadb.bufferPoolMb !== undefined) problem("mariadb.bufferPoolMb", "managed mode only: an attached server's innodb_buffer_pool_size is the operator's")
        if (mariadb.maxConnections !== undefined) problem("mariadb.maxConnections", "managed mode only: an attached server's max_connections is the operator's")
      }
      const characterSet = text(mariadb.characterSet) ?? DEFAULT_CHARACTER_SET
      const collation = text(mariadb.collation)
      if (collation !== undefined && isCharsetName(collation) && isCharsetName(characterSet) && !collationBelongsTo(collation, characterSet)) {
        problem("mariadb.collation", `${collation} is not a collation of the character set ${characterSet}${mariadb.characterSet === undefined ? " (the default; set mariadb.characterSet)" : ""}`)
      }
      if (paxos?.acceptClients === true) {
        problem("paxos.acceptClients", "refused with mariadb: a client of the log could propose binlog entries every replica executes")
      }
      const extra = record(mariadb.extraConfig)
      if (extra !== undefined) {
        for (const key of protectedServerOptions(extra)) {
          problem(`mariadb.extraConfig.${key}`, `may not set ${key}: the cluster's safety rests on the agent's own value (docs/operations.md, "MariaDB settings the agent owns")`)
        }
        for (const { key, use } of firstClassServerOptions(extra)) problem(`mariadb.extraConfig.${key}`, `may not set ${key}: use ${use}`)
        for (const key of malformedServerOptions(extra)) {
          problem(`mariadb.extraConfig.${JSON.stringify(key).slice(1, -1)}`, "not a my.cnf line: an option name is letters, digits, _ . -, and a value has no line break or outer spaces")
        }
      }
      const dbConnections = int(mariadb.maxConnections) ?? DEFAULT_MAX_CONNECTIONS
      const perListener = int(proxy?.maxConnections) ?? DEFAULT_PROXY_MAX_CONNECTIONS
      if (!attach && perListener > dbConnections) {
        problem(
          "proxy.maxConnections",
          `${perListener} per listener${proxy?.maxConnections === undefined ? " (the default)" : ""} is more than mariadb.maxConnections (${dbConnections}${
            mariadb.maxConnections === undefined ? ", the default" : ""
          }): one listener could take every connection MariaDB has for clients; lower it or raise mariadb.maxConnections`
        )
      }
      const ssl = record(mariadb.ssl)
      if (ssl !== undefined) {
        // A client's plaintext crosses to the master's node: only inside the agents' mutual TLS.
        if (root.tls === undefined && (members?.length ?? 0) > 1) {
          problem("mariadb.ssl", "needs tls (peer TLS): the proxy relays a TLS client's decrypted bytes to the master's node")
        }
        const cert = text(ssl.cert)
        const key = text(ssl.key)
        if (cert !== undefined && key !== undefined) {
          const loaded = yield* Effect.result(PeerTls.loadClientTls({ cert, key }))
          if (Result.isFailure(loaded)) problem("mariadb.ssl", loaded.failure.message)
        }
      }
    }

    const tls = record(root.tls)
    const [ca, cert, key] = [text(tls?.ca), text(tls?.cert), text(tls?.key)]
    if (ca !== undefined && cert !== undefined && key !== undefined && nodeId !== undefined) {
      const loaded = yield* Effect.result(PeerTls.load({ ca, cert, key }, nodeId))
      if (Result.isFailure(loaded)) problem("tls", loaded.failure.message)
    }

    const admin = record(root.admin)
    if (admin !== undefined) {
      if (admin.token !== undefined && admin.tokenFile !== undefined) problem("admin", "give token or tokenFile, not both")
      if (admin.openStatus === false && admin.token === undefined && admin.tokenFile === undefined) {
        problem("admin.openStatus", "false needs admin.token or admin.tokenFile (GET /status then needs it)")
      }
      const file = text(admin.tokenFile)
      if (file !== undefined && file.length > 0) {
        try {
          if (readFileSync(file, "utf8").trim().length < 16) problem("admin.tokenFile", `${file}: the token must be at least 16 characters`)
        } catch (e) {
          problem("admin.tokenFile", String(e))
        }
      }
    }

    const lease = record(root.lease)
    const [leaseMs, renewEveryMs, marginMs] = [lease?.leaseMs, lease?.renewEveryMs, lease?.marginMs]
    const fine = (u: unknown) => u === undefined || int(u) !== undefined
    if (nodeId !== undefined && fine(leaseMs) && fine(renewEveryMs) && fine(marginMs)) {
      const l = leaseConfigOf({ nodeId, lease: { leaseMs: int(leaseMs), renewEveryMs: int(renewEveryMs), marginMs: int(marginMs) } })
      if (l.marginMs >= l.leaseMs / 2 || l.renewEveryMs >= l.leaseMs - l.marginMs) {
        problem("lease", `need marginMs < leaseMs/2 and renewEveryMs < leaseMs - marginMs (here leaseMs ${l.leaseMs}, renewEveryMs ${l.renewEveryMs}, marginMs ${l.marginMs})`)
      }
    }
    return problems
  })

/** The proxy's connections per listener when `proxy.maxConnections` is not given (Proxy.ts). */
export const DEFAULT_PROXY_MAX_CONNECTIONS = 1000

const PARSE_OPTIONS = { errors: "all", onExcessProperty: "error" } as const

/**
 * Validates a config given as data (an embedding app's object, a parsed file): the schema
 * (every object refuses keys it does not know) and the checks across fields, all of them
 * in one pass; the error lists every problem with its path. `source` names it in errors (a
 * file path, "config").
 */
export const decodeNodeConfig = (input: unknown, source = "config"): Effect.Effect<NodeConfig, ConfigFileError> =>
  Effect.gen(function*() {
    const decoded = yield* Effect.result(Schema.decodeUnknownEffect(NodeConfig, PARSE_OPTIONS)(input))
    const problems = [
      ...(Result.isFailure(decoded) ? schemaProblems(decoded.failure.issue) : []),
      ...yield* crossFieldProblems(input)
    ]
    if (problems.length > 0 || Result.isFailure(decoded)) {
      return yield* new ConfigFileError({ path: source, message: formatProblems(problems) })
    }
    return decoded.success
  })

/** Reads and validates a config file (JSON, or YAML for .yaml/.yml); the error names the file and the offending field. */
export const loadNodeConfig = (path: string): Effect.Effect<NodeConfig, ConfigFileError> =>
  Effect.gen(function*() {
    const yaml = /\.ya?ml$/i.test(path)
    const text = yield* Effect.try({
      try: () => readFileSync(path, "utf8"),
      catch: (e) => new ConfigFileError({ path, message: `cannot read: ${String(e)}` })
    })
    const parsed = yield* Effect.try({
      try: (): unknown => yaml ? parseYaml(text) : JSON.parse(text),
      catch: (e) => new ConfigFileError({ path, message: `not valid ${yaml ? "YAML" : "JSON"}: ${e instanceof Error ? e.message : String(e)}` })
    })
    return yield* decodeNodeConfig(parsed, path)
  })

/** The cluster's admin token from the config (admin.token, or the file admin.tokenFile names), if any. */
export const adminTokenOf = (config: NodeConfig): string | undefined =>
  config.admin?.token ?? (config.admin?.tokenFile !== undefined ? readFileSync(config.admin.tokenFile, "utf8").trim() : undefined)

export const DEFAULT_RETAIN_MB = 1024
export const DEFAULT_RETAIN_SECONDS = 86_400

/** The retention with defaults filled in: bytes and milliseconds of log tail to keep. */
export const retentionOf = (config: NodeConfig) => ({
  bytes: (config.log?.retainMb ?? DEFAULT_RETAIN_MB) * 1024 * 1024,
  ms: (config.log?.retainSeconds ?? DEFAULT_RETAIN_SECONDS) * 1000
})

/** The lease settings with defaults filled in (a 2 s lease, renewed every third of it). */
export const leaseConfigOf = (config: Pick<NodeConfig, "nodeId" | "lease">): LeaseConfig => {
  const base = defaultLeaseConfig(config.nodeId, config.lease?.leaseMs ?? 2_000)
  return {
    ...base,
    ...(config.lease?.renewEveryMs !== undefined ? { renewEveryMs: config.lease.renewEveryMs } : {}),
    ...(config.lease?.marginMs !== undefined ? { marginMs: config.lease.marginMs } : {})
  }
}
