/** A node's configuration file (JSON), validated with Schema. */
import { Data, Effect, Schema } from "effect"
import { readFileSync } from "node:fs"

const Port = Schema.Int.pipe(Schema.check(Schema.isBetween({ minimum: 0, maximum: 65535 })))
const NodeId = Schema.Int.pipe(Schema.check(Schema.isGreaterThan(0)))

export const MemberConfig = Schema.Struct({
  nodeId: NodeId,
  host: Schema.String,
  /** Peer (Paxos) port. */
  port: Port
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
  paxos: Schema.optional(PaxosTuning)
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
    const config = yield* Schema.decodeUnknownEffect(Schema.fromJsonString(NodeConfig))(text).pipe(
      Effect.mapError((e) => new ConfigFileError({ path, message: e.message }))
    )
    if (!config.members.some((m) => m.nodeId === config.nodeId)) {
      return yield* new ConfigFileError({ path, message: `nodeId ${config.nodeId} is not among members` })
    }
    const ids = config.members.map((m) => m.nodeId)
    if (new Set(ids).size !== ids.length) {
      return yield* new ConfigFileError({ path, message: `members: duplicate nodeId in ${ids.join(",")}` })
    }
    return config
  })
