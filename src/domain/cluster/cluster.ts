/**
 * The replicated cluster state machine (docs/architecture.md, "State machine"): who is master, under which
 * epoch, how far the global binlog has reached, who the members are. Apply is pure and
 * deterministic: no clocks, no randomness, no I/O.
 */
import { Result, Schema } from "effect"
import { createHash } from "node:crypto"
import { decodePayload, encodeFrame, FRAME_HEADER_BYTES } from "../wire/frame.js"
import { followsOn, Gtid, gtidEquals } from "./gtid.js"
import { CONFIG_WINDOW, type MemberSet, withConfig } from "../paxos/core.js"

/**
 * One binlog transaction as captured from the master: its GTID and its events' bytes. A
 * transaction larger than a part (docs/commit-path.md, "Large transactions") has its
 * leading bytes in `parts` BinlogPart entries before it in the log; `events` is the rest.
 */
export const BinlogTxn = Schema.Struct({
  gtid: Gtid,
  events: Schema.Uint8Array,
  parts: Schema.optional(Schema.Int.pipe(Schema.check(Schema.isGreaterThan(0)))),
  /**
   * txnDigest of this transaction, computed once by the master that proposes it, so that
   * no other node hashes every byte of it again (a 1 MiB row cost each replica 3-6 % of
   * its CPU). Absent in entries from before: computed on apply then.
   */
  digest: Schema.optional(Schema.String)
})
export type BinlogTxn = typeof BinlogTxn.Type

export const MasterLease = Schema.TaggedStruct("MasterLease", {
  node: Schema.Int,
  basedOnVersion: Schema.Int,
  leaseMs: Schema.Int.pipe(Schema.check(Schema.isGreaterThan(0))),
  /** Random per proposal: the proposer recognises its own entry (not an earlier incarnation's). */
  proposalId: Schema.Int
})
export const Binlog = Schema.TaggedStruct("Binlog", {
  node: Schema.Int,
  epoch: Schema.Int,
  prevGtid: Schema.NullOr(Gtid),
  txns: Schema.Array(BinlogTxn).pipe(Schema.check(Schema.isMinLength(1)))
})
/**
 * Bytes `part` (from 0) of the transaction `gtid`, in order, before the Binlog entry that
 * completes it. Nothing is served or ACKed until that entry is accepted; an unfinished
 * sequence is dropped (a new part 0, a new master, or any other accepted Binlog entry).
 */
export const BinlogPart = Schema.TaggedStruct("BinlogPart", {
  node: Schema.Int,
  epoch: Schema.Int,
  gtid: Gtid,
  part: Schema.Int.pipe(Schema.check(Schema.isGreaterThanOrEqualTo(0))),
  bytes: Schema.Uint8Array
})
const Port = Schema.Int.pipe(Schema.check(Schema.isBetween({ minimum: 1, maximum: 65535 })))

/** A member as the log knows it: where it listens, and whether it votes (else it learns only). */
export const ClusterMember = Schema.Struct({
  nodeId: Schema.Int.pipe(Schema.check(Schema.isGreaterThan(0))),
  host: Schema.String,
  /** Peer (Paxos) port. */
  port: Port,
  adminPort: Port,
  rwPort: Schema.optional(Port),
  roPort: Schema.optional(Port),
  forwardRwPort: Schema.optional(Port),
  forwardRoPort: Schema.optional(Port),
  voter: Schema.Boolean
})
export type ClusterMember = typeof ClusterMember.Type

/**
 * The whole member set from now on (docs/architecture.md, "Membership"): it governs the
 * Paxos instances from CONFIG_WINDOW after the one that holds it. Always accepted: the
 * member set is what the last one chosen says (the command that proposes it checks).
 */
export const Membership = Schema.TaggedStruct("Membership", {
  members: Schema.Array(ClusterMember).pipe(Schema.check(Schema.isMinLength(1)))
})
/**
 * The master gives the lease up before its term ends (its database failed): accepted only
 * from the current master at the current version, so a stale one changes nothing. The
 * proposer's RW is closed by then (NodeDatabase fences before its readiness drops), and
 * from here on its Binlog entries are rejected (no master): nothing it commits later is
 * acknowledged.
 */
export const Resign = Schema.TaggedStruct("Resign", {
  node: Schema.Int,
  basedOnVersion: Schema.Int,
  /**
   * A switchover: the master hands over to this node, which may run at once; every other
   * node waits a lease length before running (so it takes over only if the successor does not).
   */
  successor: Schema.optional(Schema.Int)
})
/** Changes nothing; a node proposes one as a barrier to learn the log up to now. */
export const Noop = Schema.TaggedStruct("Noop", { node: Schema.Int, nonce: Schema.Int })

export const ClusterEntry = Schema.Union([MasterLease, Binlog, BinlogPart, Membership, Noop, Resign])
export type ClusterEntry = typeof ClusterEntry.Type
export type EntryOf<T extends ClusterEntry["_tag"]> = Extract<ClusterEntry, { _tag: T }>

/** Why an entry was rejected; the proposer is told, and nothing changed. */
export const RejectReason = Schema.Union([
  Schema.TaggedStruct("StaleMasterVersion", { expected: Schema.Int, got: Schema.Int }),
  Schema.TaggedStruct("NotMaster", { master: Schema.NullOr(Schema.Int), node: Schema.Int }),
  Schema.TaggedStruct("StaleEpoch", { epoch: Schema.Int, got: Schema.Int }),
  Schema.TaggedStruct("GtidMismatch", { lastGtid: Schema.NullOr(Gtid), prevGtid: Schema.NullOr(Gtid) }),
  Schema.TaggedStruct("GtidGap", { after: Schema.NullOr(Gtid), got: Gtid }),
  /** The same GTID is in the log with other content: never ACK. */
  Schema.TaggedStruct("GtidConflict", { gtid: Gtid }),
  /** A part, or the entry completing a transaction, that does not continue the parts so far. */
  Schema.TaggedStruct("PartOutOfOrder", { gtid: Gtid, expected: Schema.Int, got: Schema.Int }),
  Schema.TaggedStruct("Malformed", { message: Schema.String }),
  /** A MasterLease for a node that does not vote in the log's membership (removed, a learner, or never added). */
  Schema.TaggedStruct("NotMember", { node: Schema.Int }),
  /** A MasterLease longer than MAX_LEASE_MS: one entry must not stop elections for long. */
  Schema.TaggedStruct("LeaseTooLong", { leaseMs: Schema.Int, max: Schema.Int })
])
export type RejectReason = typeof RejectReason.Type

export type Outcome =
  | { readonly _tag: "Accepted" }
  /** A retry of a Binlog entry that is already in the log with the same content. */
  | { readonly _tag: "AlreadyAccepted" }
  | { readonly _tag: "Rejected"; readonly reason: RejectReason }

/**
 * The longest lease a MasterLease may carry (also the bound of `lease.leaseMs`): every other
 * node waits a lease out, so a longer one, even forged, would stop elections for that long.
 */
export const MAX_LEASE_MS = 60_000

/** Digests of the most recent transactions, to recognise a retried Binlog entry. */
export const RECENT_TXNS = 4096

/** A log position: instance, and index of the value within it. */
export const LogPosition = Schema.Tuple([Schema.Int, Schema.Int])
export type LogPosition = typeof LogPosition.Type

/** The parts of a large transaction accepted so far, and where they are in the log. */
export const PartialTxn = Schema.Struct({
  gtid: Gtid,
  epoch: Schema.Int,
  at: Schema.Array(LogPosition)
})
export type PartialTxn = typeof PartialTxn.Type

export const ClusterStateData = Schema.Struct({
  master: Schema.NullOr(Schema.Int),
  masterVersion: Schema.Int,
  epoch: Schema.Int,
  leaseMs: Schema.Int,
  lastGtid: Schema.NullOr(Gtid),
  members: Schema.Array(Schema.Int),
  /**
   * (gtid seq, digest) of the last RECENT_TXNS transactions, oldest first. A number is a
   * digest from before SHA-256: it matches nothing, so such a retry is refused, never ACKed.
   */
  recent: Schema.Array(Schema.Tuple([Schema.Int, Schema.Union([Schema.String, Schema.Number])])),
  /** A large transaction whose parts are being accepted (absent in snapshots from before parts). */
  partial: Schema.optional(Schema.NullOr(PartialTxn)),
  /** With no master after a switchover's Resign: the node handed over to (cleared by the next MasterLease). */
  successor: Schema.optional(Schema.NullOr(Schema.Int)),
  /** The last Membership applied (absent: the founding members of the config files, all voters). */
  membership: Schema.optional(Schema.Array(ClusterMember)),
  /**
   * The Paxos member sets from the applied point on, as the core keeps them: what a node
   * installing this state starts its log with.
   */
  configs: Schema.optional(Schema.Array(Schema.Struct({
    from: Schema.Int,
    voters: Schema.Array(Schema.Int),
    learners: Schema.Array(Schema.Int)
  })))
})
export type ClusterStateData = typeof ClusterStateData.Type

export const initialClusterState = (members: ReadonlyArray<number>): ClusterStateData => ({
  master: null,
  masterVersion: 0,
  epoch: 0,
  leaseMs: 0,
  lastGtid: null,
  members: [...members],
  recent: [],
  partial: null,
  successor: null
})

/**
 * A transaction's digest, compared only with itself to tell a retried entry from another
 * transaction under the same GTID: SHA-256 over every byte of its events (truncated to 132
 * bits), with the server id and part count. A 32-bit digest was a real risk: a collision
 * ACKs a transaction that is not in the log.
 */
export const txnDigest = (t: BinlogTxn): string =>
  `${t.gtid.server}.${t.parts ?? 0}.${createHash("sha256").update(t.events).digest("base64url").slice(0, 22)}`

/** The digest the transaction carries (its master's), else computed here. */
const digestOf = (t: BinlogTxn): string => t.digest ?? txnDigest(t)

const reject = (reason: RejectReason): Outcome => ({ _tag: "Rejected", reason })
const accepted: Outcome = { _tag: "Accepted" }

/**
 * Applies one chosen entry found at `at` in the log (the position matters only for a
 * BinlogPart: the completing entry says where its parts are). A rejection returns the same
 * state object.
 */
export const applyEntry = (state: ClusterStateData, entry: ClusterEntry, at: LogPosition = [0, 0]): readonly [ClusterStateData, Outcome] => {
  switch (entry._tag) {
    case "Noop":
      return [state, accepted]
    case "Membership": {
      const config = memberSetOf(entry.members)
      const configs = [...(state.configs ?? [{ from: 0, voters: state.members, learners: [] }])]
      // Member sets no instance from here on uses go (the one governing this instance stays).
      while (configs.length > 1 && configs[1]!.from <= at[0]) configs.shift()
      return [{
        ...state,
        members: entry.members.map((m) => m.nodeId),
        membership: [...entry.members],
        configs: withConfig(configs, { from: at[0] + CONFIG_WINDOW, ...config })
      }, accepted]
    }
    case "MasterLease": {
      if (entry.leaseMs > MAX_LEASE_MS) return [state, reject({ _tag: "LeaseTooLong", leaseMs: entry.leaseMs, max: MAX_LEASE_MS })]
      if (state.membership !== undefined && !state.membership.some((m) => m.nodeId === entry.node && m.voter)) {
        return [state, reject({ _tag: "NotMember", node: entry.node })]
      }
      if (entry.basedOnVersion !== state.masterVersion) {
        return [state, reject({ _tag: "StaleMasterVersion", expected: state.masterVersion, got: entry.basedOnVersion })]
      }
      const changed = entry.node !== state.master
      return [
        {
          ...state,
          master: entry.node,
          masterVersion: state.masterVersion + 1,
          epoch: changed ? state.epoch + 1 : state.epoch,
          leaseMs: entry.leaseMs,
          successor: null,
          ...(changed ? { partial: null } : {})
        },
        accepted
      ]
    }
    case "Resign":
      if (entry.basedOnVersion !== state.masterVersion) {
        return [state, reject({ _tag: "StaleMasterVersion", expected: state.masterVersion, got: entry.basedOnVersion })]
      }
      if (entry.node !== state.master) return [state, reject({ _tag: "NotMaster", master: state.master, node: entry.node })]
      // No master until the next MasterLease, which then starts a new epoch (even for this node).
      return [{ ...state, master: null, masterVersion: state.masterVersion + 1, partial: null, successor: entry.successor ?? null }, accepted]
    case "Binlog":
      return applyBinlog(state, entry)
    case "BinlogPart":
      return applyPart(state, entry, at)
  }
}

/** How many parts of transaction `gtid` from epoch `epoch` are accepted so far (0: none, or another transaction's). */
const partsAccepted = (state: ClusterStateData, gtid: Gtid, epoch: number): number => {
  const partial = state.partial ?? null
  return partial !== null && gtidEquals(partial.gtid, gtid) && partial.epoch === epoch ? partial.at.length : 0
}

/** Whether `gtid` is at or below the last accepted one (its transaction is complete). */
const isBehind = (state: ClusterStateData, gtid: Gtid): boolean =>
  state.lastGtid !== null && gtid.domain === state.lastGtid.domain && gtid.seq <= state.lastGtid.seq

const applyPart = (state: ClusterStateData, entry: EntryOf<"BinlogPart">, at: LogPosition): readonly [ClusterStateData, Outcome] => {
  // A retry of a transaction that was completed: its completing entry is judged on its own.
  if (isBehind(state, entry.gtid)) return [state, { _tag: "AlreadyAccepted" }]
  if (entry.node !== state.master) return [state, reject({ _tag: "NotMaster", master: state.master, node: entry.node })]
  if (entry.epoch !== state.epoch) return [state, reject({ _tag: "StaleEpoch", epoch: state.epoch, got: entry.epoch })]
  if (entry.part === 0) {
    if (!followsOn(state.lastGtid, entry.gtid)) return [state, reject({ _tag: "GtidGap", after: state.lastGtid, got: entry.gtid })]
    return [{ ...state, partial: { gtid: entry.gtid, epoch: entry.epoch, at: [at] } }, accepted]
  }
  const expected = partsAccepted(state, entry.gtid, entry.epoch)
  // A part already here again: a retry whose first try was chosen after all (parts are
  // pipelined, so it need not be the last). The same master's term re-proposes its own
  // bytes; nothing changes.
  if (expected > 0 && entry.part < expected) return [state, { _tag: "AlreadyAccepted" }]
  if (expected === 0 || entry.part !== expected) {
    return [state, reject({ _tag: "PartOutOfOrder", gtid: entry.gtid, expected, got: entry.part })]
  }
  return [{ ...state, partial: { ...state.partial!, at: [...state.partial!.at, at] } }, accepted]
}

const applyBinlog = (state: ClusterStateData, entry: EntryOf<"Binlog">): readonly [ClusterStateData, Outcome] => {
  // A retry whose first try was chosen: every transaction already here with the same content.
  const retry = recognizeRetry(state, entry)
  if (retry !== undefined) return [state, retry]
  if (entry.node !== state.master) return [state, reject({ _tag: "NotMaster", master: state.master, node: entry.node })]
  if (entry.epoch !== state.epoch) return [state, reject({ _tag: "StaleEpoch", epoch: state.epoch, got: entry.epoch })]
  if (!gtidEquals(entry.prevGtid, state.lastGtid)) {
    return [state, reject({ _tag: "GtidMismatch", lastGtid: state.lastGtid, prevGtid: entry.prevGtid })]
  }
  let prev = state.lastGtid
  for (const t of entry.txns) {
    if (!followsOn(prev, t.gtid)) return [state, reject({ _tag: "GtidGap", after: prev, got: t.gtid })]
    prev = t.gtid
  }
  const parted = partsOf(state, entry)
  if (parted !== undefined) return [state, parted]
  const added = entry.txns.map((t) => [t.gtid.seq, digestOf(t)] as const)
  const recent = [...state.recent, ...added]
  return [
    {
      ...state,
      lastGtid: prev,
      recent: recent.length > RECENT_TXNS ? recent.slice(recent.length - RECENT_TXNS) : recent,
      partial: null
    },
    accepted
  ]
}

/** Only the first transaction may have parts, and then exactly those accepted so far: else why not. */
const partsOf = (state: ClusterStateData, entry: EntryOf<"Binlog">): Outcome | undefined => {
  for (let i = 1; i < entry.txns.length; i++) {
    if (entry.txns[i]!.parts !== undefined) return reject({ _tag: "Malformed", message: "only an entry's first transaction may have parts" })
  }
  const first = entry.txns[0]!
  if (first.parts === undefined) return undefined
  const have = partsAccepted(state, first.gtid, entry.epoch)
  return have === first.parts ? undefined : reject({ _tag: "PartOutOfOrder", gtid: first.gtid, expected: have, got: first.parts })
}

/**
 * An entry whose transactions all lie at or below lastGtid is a retry. It is "already
 * accepted" only if each one is in the recent window with the same content; the same GTID
 * with other content is a conflict. Undefined: not a retry, judge it normally.
 */
const recognizeRetry = (state: ClusterStateData, entry: EntryOf<"Binlog">): Outcome | undefined => {
  const last = state.lastGtid
  if (last === null) return undefined
  const first = entry.txns[0]!.gtid
  if (first.domain !== last.domain || first.seq > last.seq) return undefined
  const bySeq = new Map(state.recent.map(([seq, d]) => [seq, d]))
  for (const t of entry.txns) {
    if (t.gtid.domain !== last.domain || t.gtid.seq > last.seq) {
      return reject({ _tag: "GtidMismatch", lastGtid: last, prevGtid: entry.prevGtid })
    }
    const d = bySeq.get(t.gtid.seq)
    if (d === undefined) return reject({ _tag: "GtidMismatch", lastGtid: last, prevGtid: entry.prevGtid })
    if (d !== digestOf(t)) return reject({ _tag: "GtidConflict", gtid: t.gtid })
  }
  return { _tag: "AlreadyAccepted" }
}

const decodeClusterEntry = Schema.decodeUnknownResult(ClusterEntry)

type Plain = { readonly [key: string]: unknown }
const isPlain = (u: unknown): u is Plain => typeof u === "object" && u !== null && Object.getPrototypeOf(u) === Object.prototype
const isInt = (u: unknown): u is number => Number.isSafeInteger(u)
const isU32 = (u: unknown): u is number => isInt(u) && u >= 0 && u <= 4294967295
const fastGtid = (u: unknown): Gtid | undefined =>
  isPlain(u) && isU32(u.domain) && isU32(u.server) && isInt(u.seq) && u.seq >= 1 ? { domain: u.domain, server: u.server, seq: u.seq } : undefined

/**
 * The Binlog entry, checked by hand: the hottest entry, and the schema's checks cost more
 * than the rest of applying it. Accepts exactly what the schema accepts and builds the same
 * object; anything else (other entries, anything off) goes through the schema.
 */
const fastBinlog = (u: unknown): EntryOf<"Binlog"> | undefined => {
  if (!isPlain(u) || u._tag !== "Binlog" || !isInt(u.node) || !isInt(u.epoch) || !Array.isArray(u.txns) || u.txns.length === 0) return undefined
  const prevGtid = u.prevGtid === null ? null : fastGtid(u.prevGtid)
  if (prevGtid === undefined) return undefined
  const txns: Array<BinlogTxn> = new Array(u.txns.length)
  for (let i = 0; i < u.txns.length; i++) {
    const t: unknown = u.txns[i]
    if (!isPlain(t) || !(t.events instanceof Uint8Array)) return undefined
    const gtid = fastGtid(t.gtid)
    if (gtid === undefined) return undefined
    if (t.parts !== undefined && (!isInt(t.parts) || t.parts <= 0)) return undefined
    if (t.digest !== undefined && typeof t.digest !== "string") return undefined
    txns[i] = {
      gtid,
      events: t.events,
      ...(t.parts !== undefined ? { parts: t.parts } : {}),
      ...(t.digest !== undefined ? { digest: t.digest } : {})
    }
  }
  return { _tag: "Binlog", node: u.node, epoch: u.epoch, prevGtid, txns }
}

/** An entry's bytes as a Paxos value (msgpack, the same codec as the wire). */
export const encodeEntry = (entry: ClusterEntry): Uint8Array => encodeFrame(entry).subarray(FRAME_HEADER_BYTES)

/** Decodes a chosen value; bytes that are no entry come back as a Malformed reason (applied as a no-op). */
export const decodeEntry = (bytes: Uint8Array): ClusterEntry | RejectReason => {
  // Every entry is a msgpack map: anything else is told apart by its first byte, without
  // the decoder's exception for trailing bytes (what most foreign values would cost).
  const first = bytes[0]
  if (first === undefined || !((first >= 0x80 && first <= 0x8f) || first === 0xde || first === 0xdf)) {
    return { _tag: "Malformed", message: `not an entry: a value must be a msgpack map (first byte ${first === undefined ? "none" : `0x${first.toString(16)}`})` }
  }
  const payload = decodePayload(bytes)
  if (Result.isFailure(payload)) return { _tag: "Malformed", message: payload.failure.message }
  const fast = fastBinlog(payload.success)
  if (fast !== undefined) return fast
  const entry = decodeClusterEntry(payload.success)
  return Result.isFailure(entry) ? { _tag: "Malformed", message: entry.failure.message } : entry.success
}

/** Members for people: "1, 2, 4 (learner)". */
export const describeMembers = (members: ReadonlyArray<{ readonly nodeId: number; readonly voter: boolean }>) =>
  members.map((m) => `${m.nodeId}${m.voter ? "" : " (learner)"}`).join(", ")

/** The Paxos member set of a membership: its voters, and the rest as learners. */
export const memberSetOf = (members: ReadonlyArray<ClusterMember>): MemberSet => ({
  voters: members.filter((m) => m.voter).map((m) => m.nodeId).sort((a, b) => a - b),
  learners: members.filter((m) => !m.voter).map((m) => m.nodeId).sort((a, b) => a - b)
})

const MEMBERSHIP_TAG = new TextEncoder().encode("Membership")
/**
 * The member set a chosen value sets, if it is a Membership entry (PaxosConfig.membershipOf).
 * Most values are Binlog entries: only a value whose first bytes hold the tag is decoded.
 */
export const membershipOfValue = (value: Uint8Array): MemberSet | undefined => {
  const head = value.subarray(0, 24)
  let found = false
  for (let i = 0; i + MEMBERSHIP_TAG.length <= head.length && !found; i++) {
    found = MEMBERSHIP_TAG.every((b, j) => head[i + j] === b)
  }
  if (!found) return undefined
  const entry = decodeEntry(value)
  return entry._tag === "Membership" ? memberSetOf(entry.members) : undefined
}

/** Applies a chosen value: a malformed one changes nothing and is rejected. */
export const applyValue = (state: ClusterStateData, bytes: Uint8Array): readonly [ClusterStateData, Outcome] => {
  const entry = decodeEntry(bytes)
  return entry._tag === "Malformed" ? [state, { _tag: "Rejected", reason: entry }] : applyEntry(state, entry as ClusterEntry)
}
