/** A node's configuration (a JSON or YAML file, or data from an embedding app), validated with Schema. */
import { protectedServerOptions } from "../domain/mysql/serverOptions.js"
import { Data, Effect, Schema } from "effect"
import { readFileSync } from "node:fs"
import { parse as parseYaml } from "yaml"
import { defaultLeaseConfig, type LeaseConfig } from "../domain/cluster/lease.js"
import * as PeerTls from "../services/tls/PeerTls.js"

const Port = Schema.Int.pipe(Schema.check(Schema.isBetween({ minimum: 0, maximum: 65535 })))
const NodeId = Schema.Int.pipe(Schema.check(Schema.isGreaterThan(0)))

export const MemberConfig = Schema.Struct({
  nodeId: NodeId,
  host: Schema.String,
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
  socket: Schema.optional(Schema.String),
  user: Schema.optional(Schema.String),
  password: Schema.optional(Schema.String),
  /** Loopback port of this node's binlog server, which its MariaDB replicates from. */
  binlogServerPort: Port,
  /** The largest transaction the cluster takes, in MiB (MariaDB's max_binlog_cache_size); default 1024. */
  maxTransactionMb: Schema.optional(Schema.Int.pipe(Schema.check(Schema.isBetween({ minimum: 1, maximum: 1024 * 1024 })))),
  /** Extra my.cnf lines for a managed server (true = a bare flag). */
  extraConfig: Schema.optional(Schema.Record(Schema.String, Schema.Union([Schema.String, Schema.Number, Schema.Boolean]))),
  /**
   * Clients over TLS (docs/operations.md, "Client TLS"): PEM files of the certificate
   * clients see (naming every member's address; `certs` makes `server.crt`) and its key.
   * A managed MariaDB gets them as ssl_cert/ssl_key; the proxy ends clients' TLS with them.
   * `require`: the RW and RO ports refuse a login without TLS, and a managed MariaDB gets
   * require_secure_transport (TCP logins to it need TLS; the agent's own use its socket).
   */
  ssl: Schema.optional(Schema.Struct({ cert: Schema.String, key: Schema.String, require: Schema.optional(Schema.Boolean) }))
})
export type MariaDbSettings = typeof MariaDbSettings.Type

export const ProxySettings = Schema.Struct({
  /** Address the client and forward ports listen on; default: this member's host. */
  listenHost: Schema.optional(Schema.String),
  proxyProtocol: Schema.optional(Schema.Literals(["v1", "v2", "off"])),
  connectTimeoutMs: Schema.optional(Schema.Int.pipe(Schema.check(Schema.isGreaterThan(0)))),
  maxConnections: Schema.optional(Schema.Int.pipe(Schema.check(Schema.isGreaterThan(0)))),
  /** With no replica readable, send RO connections to the master; default true. */
  roFallbackToMaster: Schema.optional(Schema.Boolean)
})

export const LeaseSettings = Schema.Struct({
  leaseMs: Schema.optional(Schema.Int.pipe(Schema.check(Schema.isBetween({ minimum: 200, maximum: 60_000 })))),
  renewEveryMs: Schema.optional(Schema.Int.pipe(Schema.check(Schema.isGreaterThan(0)))),
  marginMs: Schema.optional(Schema.Int.pipe(Schema.check(Schema.isGreaterThanOrEqualTo(0))))
})

export const PaxosTuning = Schema.Struct({
  batchMaxCount: Schema.optional(Schema.Int),
  batchMaxBytes: Schema.optional(Schema.Int),
  maxInflight: Schema.optional(Schema.Int),
  tickMs: Schema.optional(Schema.Number),
  proposeTimeoutMs: Schema.optional(Schema.Number),
  /** Take proposals from PaxosClient connections on the peer port (a log-only cluster; refused with mariadb). */
  acceptClients: Schema.optional(Schema.Boolean)
})

export const NodeConfig = Schema.Struct({
  clusterId: Schema.String.pipe(Schema.check(Schema.isMinLength(1))),
  nodeId: NodeId,
  dataDir: Schema.String,
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
  tls: Schema.optional(Schema.Struct({ ca: Schema.String, cert: Schema.String, key: Schema.String })),
  /** Without it the node runs the log and the lease only (no database, no proxy). */
  mariadb: Schema.optional(MariaDbSettings),
  /**
   * Retention (docs/operations.md, "Storage"). The Paxos log keeps what every live member
   * still reads plus a tail of at most `retainMb` (default 1024) and `retainSeconds`
   * (default 86400); a managed MariaDB's own binlog is purged to the same bounds.
   * `segmentMb` (default 64): the log's file size, the step compaction deletes by.
   */
  log: Schema.optional(Schema.Struct({
    retainMb: Schema.optional(Schema.Int.pipe(Schema.check(Schema.isGreaterThanOrEqualTo(1)))),
    retainSeconds: Schema.optional(Schema.Int.pipe(Schema.check(Schema.isGreaterThanOrEqualTo(1)))),
    segmentMb: Schema.optional(Schema.Int.pipe(Schema.check(Schema.isBetween({ minimum: 1, maximum: 1024 }))))
  })),
  /**
   * The admin HTTP port (docs/operations.md, "Admin HTTP"): every call that changes
   * something, and GET /backup, needs the cluster's admin token (the same on every node),
   * given here or in a file (mode 0600) that holds only it. `openStatus: false`: GET
   * /status needs it too (it names the cluster, its members and its master).
   */
  admin: Schema.optional(Schema.Struct({
    token: Schema.optional(Schema.String.pipe(Schema.check(Schema.isMinLength(16)))),
    tokenFile: Schema.optional(Schema.String),
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

/**
 * Validates a config given as data (an embedding app's object, a parsed file): the schema,
 * then the checks across fields. `source` names it in errors (a file path, "config").
 */
export const decodeNodeConfig = (input: unknown, source = "config"): Effect.Effect<NodeConfig, ConfigFileError> =>
  Effect.gen(function*() {
    const invalid = (message: string) => new ConfigFileError({ path: source, message })
    const config = yield* Schema.decodeUnknownEffect(NodeConfig)(input).pipe(Effect.mapError((e) => invalid(e.message)))
    if (!config.members.some((m) => m.nodeId === config.nodeId)) {
      return yield* invalid(`nodeId ${config.nodeId} is not among members`)
    }
    const ids = config.members.map((m) => m.nodeId)
    if (new Set(ids).size !== ids.length) return yield* invalid(`members: duplicate nodeId in ${ids.join(",")}`)
    if (config.mariadb !== undefined) {
      const missing = config.members.flatMap((m) =>
        (["rwPort", "roPort", "forwardRwPort", "forwardRoPort"] as const).filter((k) => m[k] === undefined).map((k) => `members[nodeId=${m.nodeId}].${k}`)
      )
      if (missing.length > 0) return yield* invalid(`with mariadb set, every member needs proxy ports: missing ${missing.join(", ")}`)
      if (config.mariadb.mode === "attach" && config.mariadb.user === undefined) {
        return yield* invalid("mariadb.mode attach needs mariadb.user (and password or socket)")
      }
    }
    if (config.mariadb !== undefined && config.paxos?.acceptClients === true) {
      return yield* invalid("paxos.acceptClients is refused with mariadb: a client of the log could propose binlog entries every replica executes")
    }
    if (config.tls !== undefined) yield* PeerTls.load(config.tls, config.nodeId).pipe(Effect.mapError((e) => invalid(e.message)))
    if (config.mariadb?.ssl !== undefined) {
      // A client's plaintext crosses to the master's node: only inside the agents' mutual TLS.
      if (config.tls === undefined && config.members.length > 1) {
        return yield* invalid("mariadb.ssl needs tls (peer TLS): the proxy relays a TLS client's decrypted bytes to the master's node")
      }
      yield* PeerTls.loadClientTls(config.mariadb.ssl).pipe(Effect.mapError((e) => invalid(e.message)))
    }
    if (config.admin?.token !== undefined && config.admin.tokenFile !== undefined) return yield* invalid("admin: give token or tokenFile, not both")
    if (config.admin?.openStatus === false && config.admin.token === undefined && config.admin.tokenFile === undefined) {
      return yield* invalid("admin.openStatus false needs admin.token or admin.tokenFile (GET /status then needs it)")
    }
    if (config.admin?.tokenFile !== undefined) {
      const file = config.admin.tokenFile
      const token = yield* Effect.try({ try: () => readFileSync(file, "utf8").trim(), catch: (e) => invalid(`admin.tokenFile: ${String(e)}`) })
      if (token.length < 16) return yield* invalid(`admin.tokenFile ${file}: the token must be at least 16 characters`)
    }
    const refused = protectedServerOptions(config.mariadb?.extraConfig ?? {})
    if (refused.length > 0) {
      return yield* invalid(
        `mariadb.extraConfig may not set ${refused.join(", ")}: the cluster's safety rests on the agent's own value (docs/operations.md, "MariaDB settings the agent owns")`
      )
    }
    const lease = leaseConfigOf(config)
    if (lease.marginMs >= lease.leaseMs / 2 || lease.renewEveryMs >= lease.leaseMs - lease.marginMs) {
      return yield* invalid("lease: need marginMs < leaseMs/2 and renewEveryMs < leaseMs - marginMs")
    }
    return config
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
export const leaseConfigOf = (config: NodeConfig): LeaseConfig => {
  const base = defaultLeaseConfig(config.nodeId, config.lease?.leaseMs ?? 2_000)
  return {
    ...base,
    ...(config.lease?.renewEveryMs !== undefined ? { renewEveryMs: config.lease.renewEveryMs } : {}),
    ...(config.lease?.marginMs !== undefined ? { marginMs: config.lease.marginMs } : {})
  }
}
