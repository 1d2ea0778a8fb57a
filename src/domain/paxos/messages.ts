import { Schema } from "effect"

/** A ballot orders proposers: (round, nodeId), compared lexicographically. */
export const Ballot = Schema.Struct({
  round: Schema.Int,
  node: Schema.Int
})
export type Ballot = typeof Ballot.Type

const Instance = Schema.Int.pipe(Schema.check(Schema.isGreaterThanOrEqualTo(0)))

/**
 * The value of one log instance: a batch of client values. (proposer, round, seq)
 * is unique to the batch, so a proposer recognises its own batch when it is chosen.
 * An empty batch is a no-op (a leader fills gaps with it).
 */
export const PaxosValue = Schema.Struct({
  proposer: Schema.Int,
  round: Schema.Int,
  seq: Schema.Int,
  values: Schema.Array(Schema.Uint8Array)
})
export type PaxosValue = typeof PaxosValue.Type

/** What an acceptor reports in a promise: an accepted value, or one it knows is chosen. */
export const PromiseEntry = Schema.Struct({
  instance: Instance,
  ballot: Schema.NullOr(Ballot), // null: known chosen (outranks every ballot)
  value: PaxosValue
})
export type PromiseEntry = typeof PromiseEntry.Type

export const ChosenEntry = Schema.Struct({ instance: Instance, value: PaxosValue })
export type ChosenEntry = typeof ChosenEntry.Type

export const PaxosMessage = Schema.Union([
  /** Phase 1a: covers every instance at or above the acceptor's own chosen prefix. */
  Schema.TaggedStruct("Prepare", { ballot: Ballot }),
  /** Phase 1b: entries for every instance >= chosenUpTo that the acceptor accepted or knows chosen. */
  Schema.TaggedStruct("Promise", { ballot: Ballot, chosenUpTo: Instance, entries: Schema.Array(PromiseEntry) }),
  /** Phase 2a. */
  Schema.TaggedStruct("Accept", { ballot: Ballot, instance: Instance, value: PaxosValue }),
  /** Phase 2b. */
  Schema.TaggedStruct("Accepted", { ballot: Ballot, instance: Instance }),
  /** Refusal of a Prepare or Accept: the acceptor has promised a higher ballot. */
  Schema.TaggedStruct("Nack", { ballot: Ballot, promised: Ballot }),
  /** These instances were chosen with the value accepted at `ballot`. */
  Schema.TaggedStruct("Commit", { ballot: Ballot, instances: Schema.Array(Instance) }),
  /**
   * Periodic: lets peers see how far this node has learned (drives catch-up). `flags` and
   * `needed` are not Paxos: what the node above the log advertises to its peers on this
   * heartbeat (PaxosLog.advertise, PaxosLog.retain); the core neither sets nor reads them.
   */
  Schema.TaggedStruct("Status", {
    chosenUpTo: Instance,
    maxChosen: Schema.Int,
    leader: Schema.NullOr(Ballot),
    flags: Schema.optional(Schema.Int),
    /** The oldest instance this node still reads (its database's next transaction): peers keep the log from there. */
    needed: Schema.optional(Instance)
  }),
  Schema.TaggedStruct("CatchupRequest", { from: Instance, count: Schema.Int }),
  /** A non-leader hands proposals to the leader; (origin, incarnation) tells restarts apart. */
  Schema.TaggedStruct("Forward", {
    origin: Schema.Int,
    incarnation: Schema.Int,
    proposals: Schema.Array(Schema.Struct({ requestId: Schema.Int, value: Schema.Uint8Array }))
  }),
  /** The leader tells the origin where its forwarded proposals ended up. */
  Schema.TaggedStruct("ForwardResult", {
    incarnation: Schema.Int,
    results: Schema.Array(Schema.Struct({ requestId: Schema.Int, instance: Instance, index: Schema.NullOr(Schema.Int) }))
  }),
  /**
   * Chosen values from the requested instance on; `compactedBelow` when the request starts
   * below what this node still holds (its log was compacted there: it cannot help).
   */
  Schema.TaggedStruct("CatchupReply", { entries: Schema.Array(ChosenEntry), compactedBelow: Schema.optional(Instance) })
])
export type PaxosMessage = typeof PaxosMessage.Type

export type MessageOf<T extends PaxosMessage["_tag"]> = Extract<PaxosMessage, { _tag: T }>

export const compareBallot = (a: Ballot, b: Ballot): number =>
  a.round !== b.round ? a.round - b.round : a.node - b.node

export const ballotEquals = (a: Ballot, b: Ballot): boolean => a.round === b.round && a.node === b.node

export const ZeroBallot: Ballot = { round: 0, node: 0 }

const bytesEqual = (a: Uint8Array, b: Uint8Array): boolean => {
  if (a.byteLength !== b.byteLength) return false
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return false
  return true
}

export const valueEquals = (a: PaxosValue, b: PaxosValue): boolean =>
  a.proposer === b.proposer &&
  a.round === b.round &&
  a.seq === b.seq &&
  a.values.length === b.values.length &&
  a.values.every((v, i) => bytesEqual(v, b.values[i]!))

export const valueBytes = (v: PaxosValue): number => v.values.reduce((n, x) => n + x.byteLength, 0)
