/** A node's configuration file (JSON), validated with Schema. */
import { Data, Effect, Schema } from "effect"
import { readFileSync } from "node:fs"
import { parse as parseYaml } from "yaml"
import { defaultLeaseConfig, type LeaseConfig } from "../domain/lease.js"

const Port = Schema.Int.pipe(Schema.check(Schema.isBetween({ minimum: 0, maximum: 65535 })))
const NodeId = Schema.Int.pipe(Schema.check(Schema.isGreaterThan(0)))

export const MemberConfig = Schema.Struct({
  nodeId: NodeId,
  host: Schema.String,
  /** Peer (Paxos) port. */
  port: Port,
  /** Admin HTTP port (GET /status). */
  adminPort: Port
})

export const LeaseSettings = Schema.Struct({
  leaseMs: Schema.optional(Schema.Int.pipe(Schema.check(Schema.isGreaterThanOrEqualTo(200)))),
  renewEveryMs: Schema.optional(Schema.Int.pipe(Schema.check(Schema.isGreaterThan(0)))),
  marginMs: Schema.optional(Schema.Int.pipe(Schema.check(Schema.isGreaterThanOrEqualTo(0))))
})

export const PaxosTuning = Schema.Struct({
  batchMaxCount: Schema.optional(Schema.Int),
  batchMaxBytes: Schema.optional(Schema.Int),
  batchMaxWaitMs: Schema.optional(Schema.Number),
  maxInflight: Schema.optional(Schema.Int),
  tickMs: Schema.optional(Schema.Number),
  proposeTimeoutMs: Schema.optional(Schema.Number)
})

export const NodeConfig = Schema.Struct({
  clusterId: Schema.String.pipe(Schema.check(Schema.isMinLength(1))),
  nodeId: NodeId,
  dataDir: Schema.String,
  members: Schema.Array(MemberConfig).pipe(Schema.check(Schema.isMinLength(1))),
  paxos: Schema.optional(PaxosTuning),
  lease: Schema.optional(LeaseSettings)
})
export type NodeConfig = typeof NodeConfig.Type

export class ConfigFileError extends Data.TaggedError("ConfigFileError")<{
  readonly path: string
  readonly message: string
}> {}

/** Reads and validates a config file; the error names the file and the offending field. */
export const loadNodeConfig = (path: string): Effect.Effect<NodeConfig, ConfigFileError> =>
  Effect.gen(function*() {
    const text = yield* Effect.try({
      try: () => readFileSync(path, "utf8"),
      catch: (e) => new ConfigFileError({ path, message: `cannot read: ${String(e)}` })
    })
    // JSON, or YAML for .yaml/.yml files.
    const parsed = yield* Effect.try({
      try: (): unknown => /\.ya?ml$/i.test(path) ? parseYaml(text) : JSON.parse(text),
      catch: (e) => new ConfigFileError({ path, message: `not valid ${/\.ya?ml$/i.test(path) ? "YAML" : "JSON"}: ${e instanceof Error ? e.message : String(e)}` })
    })
    const config = yield* Schema.decodeUnknownEffect(NodeConfig)(parsed).pipe(
      Effect.mapError((e) => new ConfigFileError({ path, message: e.message }))
    )
    if (!config.members.some((m) => m.nodeId === config.nodeId)) {
      return yield* new ConfigFileError({ path, message: `nodeId ${config.nodeId} is not among members` })
    }
    const ids = config.members.map((m) => m.nodeId)
    if (new Set(ids).size !== ids.length) {
      return yield* new ConfigFileError({ path, message: `members: duplicate nodeId in ${ids.join(",")}` })
    }
    const lease = leaseConfigOf(config)
    if (lease.marginMs >= lease.leaseMs / 2 || lease.renewEveryMs >= lease.leaseMs - lease.marginMs) {
      return yield* new ConfigFileError({ path, message: "lease: need marginMs < leaseMs/2 and renewEveryMs < leaseMs - marginMs" })
    }
    return config
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
