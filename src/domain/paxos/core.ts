/**
 * Multi-Paxos as a deterministic state machine: no I/O, no clocks, no Effect services.
 *
 * The driver feeds inputs (peer messages, client proposals, ticks) with the current
 * monotonic time and carries out each step's outputs:
 *   - messages for which `sendsBeforePersist` holds, and `results`, may go at once;
 *   - every record of `persist` is made durable, in step order (writes may overlap with
 *     later steps, but complete in order);
 *   - once a step's records and all earlier ones are durable: the other messages (those to
 *     this node itself come back to it as inputs) and `chosen` deliveries;
 *   - `readChosen` answers at any time: they tell chosen values (a majority holds them), and
 *     a storage read need only wait for writes of the very instances it reads.
 * A crash may lose any suffix of writes; nothing that vouched for them has left the node.
 */
import { Fifo } from "../fifo.js"
import {
  type Ballot,
  ballotEquals,
  type ChosenEntry,
  compareBallot,
  type MessageOf,
  type PaxosMessage,
  type PaxosValue,
  type PromiseEntry,
  valueBytes,
  valueEquals,
  ZeroBallot
} from "./messages.js"

/**
 * Whether a message may leave before the step's records are durable. Promise, Accepted and
 * Prepare may not: they vouch for a promise, an accept or a ballot the node must never
 * forget. The rest carry nothing a crash could make untrue (a Commit or result reports a
 * value already accepted durably by a majority, including this node in an earlier step).
 */
export const sendsBeforePersist = (m: PaxosMessage): boolean =>
  m._tag !== "Promise" && m._tag !== "Accepted" && m._tag !== "Prepare"

/** Who takes part in an instance: voters form its quorums; learners get every message but do not count. */
export interface MemberSet {
  readonly voters: ReadonlyArray<number>
  readonly learners: ReadonlyArray<number>
}

/** The member set of instances from `from` on (until the next entry's `from`). */
export interface ConfigEntry extends MemberSet {
  readonly from: number
}

/**
 * Reconfiguration window: a member set chosen at instance k governs instances from
 * k + CONFIG_WINDOW on (Lamport's alpha). A leader therefore knows the member set of every
 * instance below its chosen prefix + CONFIG_WINDOW, and never places a value beyond that.
 * A protocol constant: every node must use the same.
 */
export const CONFIG_WINDOW = 16

export const quorumOf = (c: MemberSet): number => Math.floor(c.voters.length / 2) + 1

export interface PaxosConfig {
  readonly nodeId: number
  /** The founding member set (voters) of instance 0; the log's Membership values change it. */
  readonly members: ReadonlyArray<number>
  /**
   * The member set a chosen value sets, if it is a membership change (else undefined).
   * Pure; every node must classify alike. Without it the member set never changes.
   */
  readonly membershipOf?: (value: Uint8Array) => MemberSet | undefined
  /**
   * Batching (group commit): a value goes into an instance at once while fewer than
   * maxInflight are in phase 2; beyond that, values wait and whatever waited goes out as
   * one batch as soon as an instance is chosen, at most this many values ...
   */
  readonly batchMaxCount: number
  /** ... and this many bytes (a single larger value goes alone). */
  readonly batchMaxBytes: number
  /** Instances a leader keeps in phase 2 at once (pipelining). */
  readonly maxInflight: number
  readonly prepareRetryMs: number
  readonly acceptRetransmitMs: number
  readonly statusIntervalMs: number
  /** Without word from a leader for this long, a node with work may take over. */
  readonly leaderTimeoutMs: number
  readonly backoffMinMs: number
  readonly backoffMaxMs: number
  readonly catchupBatch: number
  /** Bytes of values in one catch-up reply, about (at least one value): a reply never outgrows a frame. */
  readonly catchupMaxBytes: number
  readonly catchupRetryMs: number
  /**
   * An unanswered catch-up request is sent again (to the next peer ahead) only after this
   * long: a reply of catchupMaxBytes takes a loaded peer a few hundred ms to read and send,
   * and asking again after catchupRetryMs had two peers send the same slice.
   */
  readonly catchupReplyTimeoutMs: number
  /**
   * Catch-up requests out at once (each for about one reply's worth of instances): the
   * peer reads and sends the next slice while this node takes in the last one.
   */
  readonly catchupPipeline: number
  /**
   * A node behind every peer's compacted log is said to need an install only once its
   * chosen prefix has not moved for this long: messages still on their way (a node that
   * was stopped has a backlog) may fill the gap.
   */
  readonly installAfterMs: number
  /**
   * Chosen values kept in memory below the chosen prefix, at most this many and this many
   * bytes (the newest always); older ones are served from storage.
   */
  readonly memoryWindow: number
  readonly memoryWindowBytes: number
  readonly seed: number
}

export const defaultPaxosConfig = (nodeId: number, members: ReadonlyArray<number>, seed: number): PaxosConfig => ({
  nodeId,
  members,
  batchMaxCount: 1024,
  batchMaxBytes: 1 << 20,
  maxInflight: 4,
  prepareRetryMs: 200,
  acceptRetransmitMs: 200,
  statusIntervalMs: 500,
  leaderTimeoutMs: 1_000,
  backoffMinMs: 20,
  backoffMaxMs: 200,
  catchupBatch: 256,
  catchupMaxBytes: 4 * 1024 * 1024,
  catchupRetryMs: 200,
  catchupReplyTimeoutMs: 2_000,
  catchupPipeline: 2,
  installAfterMs: 3_000,
  memoryWindow: 256,
  memoryWindowBytes: 4 * 1024 * 1024,
  seed
})

/**
 * Records the driver must make durable before acting on the step's other outputs. The log
 * keeps one value per instance: an Accepted record, or a Chosen one (a value learned
 * without accepting it here, or other than the one accepted). A value learned chosen that
 * is the one accepted here writes nothing: the driver records how far the chosen prefix
 * reaches with its next write (a hint: a crash may lose it, and the node learns again).
 */
export type PersistRecord =
  | { readonly _tag: "Promised"; readonly ballot: Ballot }
  /**
   * Everything below `upTo` is chosen and no longer kept here: the node took a copy of the
   * state it leads to from a peer (Install), its own log there is dropped.
   */
  | { readonly _tag: "Installed"; readonly upTo: number; readonly configs: ReadonlyArray<ConfigEntry> }
  /** A membership value was learned chosen: this member set governs instances from `from` on. */
  | { readonly _tag: "Configured"; readonly config: ConfigEntry }
  | { readonly _tag: "ProposerRound"; readonly round: number }
  | { readonly _tag: "Accepted"; readonly instance: number; readonly ballot: Ballot; readonly value: PaxosValue }
  | { readonly _tag: "Chosen"; readonly instance: number; readonly value: PaxosValue }

/** What storage gives back to a restarting node. */
export interface DurableState {
  readonly promised: Ballot
  readonly proposerRound: number
  /** Accepted entries at or above the chosen prefix (older ones are not needed). */
  readonly accepted: ReadonlyArray<{ readonly instance: number; readonly ballot: Ballot; readonly value: PaxosValue }>
  /** Chosen entries from (chosenUpTo - memoryWindow) on, including any beyond a gap. */
  readonly chosen: ReadonlyArray<ChosenEntry>
  /** First instance not chosen in the contiguous prefix. */
  readonly chosenUpTo: number
  /** Instances below it are no longer stored (compacted, or skipped by an Install); default 0. */
  readonly compactedBelow?: number
  /** Member sets learned from the log (Configured, Installed), in `from` order; default: the founding members from 0. */
  readonly configs?: ReadonlyArray<ConfigEntry>
}

/**
 * Whether this acceptor has never voted: no promise, no proposer round, nothing accepted or
 * chosen. A node that took part and lost its storage looks the same; only a node of a new
 * cluster may start like this (it would otherwise vote with a blank promise).
 */
export const isBlank = (d: DurableState): boolean =>
  d.promised.round === 0 && d.proposerRound === 0 && d.accepted.length === 0 && d.chosen.length === 0 && d.chosenUpTo === 0

export const emptyDurableState: DurableState = {
  promised: ZeroBallot,
  proposerRound: 0,
  accepted: [],
  chosen: [],
  chosenUpTo: 0,
  compactedBelow: 0
}

export type Input =
  /**
   * `urgent` (small control values, such as a lease renewal): goes ahead of the queue, on
   * its own, even with `maxInflight` instances in flight (one more), so that it is never
   * stuck behind large values on a slow disk.
   */
  | { readonly _tag: "Propose"; readonly requestId: number; readonly value: Uint8Array; readonly urgent?: boolean }
  | { readonly _tag: "Cancel"; readonly requestId: number }
  | { readonly _tag: "Receive"; readonly from: number; readonly message: PaxosMessage }
  | { readonly _tag: "Tick" }
  /** Become the leader (the master lease holder asks: its proposals then go out directly). */
  | { readonly _tag: "Lead" }
  /**
   * The driver dropped its stored values below `below` (at most the chosen prefix): catch-up
   * requests from there are answered "compacted", and memory below it is let go.
   */
  | { readonly _tag: "Compact"; readonly below: number }
  /**
   * Skip to `upTo`: every instance below it is chosen, and the layer above installed the
   * state it leads to from a peer (a node behind every peer's compacted log). Persists an
   * Installed record; instances from `upTo` on are then learned as usual.
   */
  | { readonly _tag: "Install"; readonly upTo: number; readonly configs: ReadonlyArray<ConfigEntry> }
  /**
   * Stop (or resume) asking peers for chosen values this node lacks: the layer above is
   * taking a copy of a peer's state that will be installed (catching up the log meanwhile
   * would only load the peers).
   */
  | { readonly _tag: "PauseCatchup"; readonly paused: boolean }
  /**
   * The driver's writes are (no longer) behind by more than it allows: while they are, no
   * catch-up request goes out, so a node far behind takes values in at its disk's pace
   * instead of queueing them in memory (and its readers wait for those writes).
   */
  | { readonly _tag: "WriteBacklog"; readonly over: boolean }

export type ProposalResult =
  | { readonly _tag: "Chosen"; readonly requestId: number; readonly instance: number; readonly index: number }
  | { readonly _tag: "Superseded"; readonly requestId: number; readonly instance: number }

export interface Outputs {
  persist: Array<PersistRecord>
  send: Array<{ readonly to: number; readonly message: PaxosMessage }>
  /** Newly chosen instances in log order, contiguous from the previous step's. */
  chosen: Array<ChosenEntry>
  results: Array<ProposalResult>
  /** Catch-up requests below the memory window: the driver answers them from storage. */
  readChosen: Array<{ readonly to: number; readonly from: number; readonly count: number; readonly maxBytes: number }>
  /** Set by an Install: `chosen` resumes from this instance (nothing below it is delivered). */
  installed?: number
}

const emptyOutputs = (): Outputs => ({ persist: [], send: [], chosen: [], results: [], readChosen: [] })

/** Where a proposal came from: this node, or a follower that forwarded it to us. */
interface Origin {
  readonly node: number
  readonly incarnation: number
  readonly requestId: number
}

interface Queued {
  readonly origin: Origin
  readonly value: Uint8Array
  readonly at: number
  readonly urgent: boolean
}

interface Inflight {
  readonly value: PaxosValue
  readonly acks: Set<number>
  sentAt: number
}

export interface PaxosCounters {
  proposed: number
  batches: number
  batchedValues: number
  prepares: number
  acceptRetransmits: number
  superseded: number
}

/** A batch this node put into an instance, awaiting the instance's outcome. */
interface Placed {
  readonly value: PaxosValue
  readonly origins: ReadonlyArray<Origin>
  readonly at: number
}

type Role = "follower" | "preparing" | "leader"

/** mulberry32: small, fast, deterministic. */
const nextRandom = (state: { s: number }): number => {
  state.s = (state.s + 0x6d2b79f5) | 0
  let t = state.s
  t = Math.imul(t ^ (t >>> 15), t | 1)
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

export class PaxosNode {
  readonly config: PaxosConfig
  private readonly rng: { s: number }
  /** Member sets by the instance they govern from (sorted; the first governs the chosen prefix). */
  private configs: Array<ConfigEntry>
  /** Every other node of the member sets from the chosen prefix on (voters and learners): who hears from us. */
  private peers: ReadonlyArray<number> = []
  private members = new Set<number>()
  /** Pipelining stays inside the reconfiguration window. */
  private readonly maxInflight: number

  // Acceptor (durable)
  private promised: Ballot
  private readonly accepted = new Map<number, { ballot: Ballot; value: PaxosValue }>()
  // Learner
  private readonly chosen = new Map<number, PaxosValue>()
  /** The oldest chosen instance below the prefix still in memory, and the bytes held from it up to the prefix. */
  private windowStart: number
  private windowBytes = 0
  private chosenUpToValue: number
  private maxChosen: number
  private readonly peerChosenUpTo = new Map<number, number>()
  /** When a catch-up request last went out (-Infinity: the last reply brought progress, ask again at once). */
  private catchupSentAt = -Infinity
  /**
   * Catch-up requests out and unanswered, oldest first, each for instances [from, end): the
   * next goes from the first instance none covers. catchupReplyTimeoutMs after the oldest
   * was sent, all are given up and asked again, of the next peer ahead.
   */
  private readonly catchupOut: Array<{ readonly peer: number; readonly from: number; readonly end: number; readonly sentAt: number }> = []
  /** Instances one reply carries (its byte bound over the last reply's values); unknown before a reply. */
  private catchupSpan: number | null = null
  private catchupPeerIndex = 0
  /** Below it nothing is stored here any more. */
  private compactedBelowValue: number
  /** Where each peer said its log starts, when it could not answer a catch-up request. */
  private readonly peerCompactedBelow = new Map<number, number>()
  /** Each peer's own chosen prefix, as it last said (peerChosenUpTo also counts values beyond its gaps). */
  private readonly peerPrefix = new Map<number, number>()
  /** When the chosen prefix last moved (needsInstall waits for it to stand still). */
  private prefixMovedAt = 0
  // Proposer
  private proposerRound: number
  private highestRoundSeen: number
  private role: Role = "follower"
  private ballot: Ballot = ZeroBallot
  private promises = new Map<number, MessageOf<"Promise">>()
  /** Who promised the current ballot (kept while leading: a new member set's quorum is checked against it). */
  private promisers = new Set<number>()
  /**
   * Phase 1's outcome: the highest-ballot value reported per instance, to re-propose up to
   * recoverTop (placed in order as their member sets become known).
   */
  private readonly recovered = new Map<number, { readonly ballot: Ballot; readonly value: PaxosValue }>()
  private recoverTop = -1
  private prepareSentAt = 0
  private nextInstance = 0
  private readonly inflight = new Map<number, Inflight>()
  private queue: Array<Queued> = []
  private queuedBytes = 0
  private readonly placed = new Map<number, Placed>()
  private batchSeq = 0
  /** Running totals for metrics (docs/operations.md, "Metrics"); they only grow. */
  private readonly counting = { proposed: 0, batches: 0, batchedValues: 0, prepares: 0, acceptRetransmits: 0, superseded: 0 }
  private backoffUntil = 0
  private lastLeaderContact = -Infinity
  private knownLeader: Ballot | null = null
  /** A leader that left our forwarded proposals unanswered: not forwarded to again. */
  private distrusted: Ballot | null = null
  /** Our proposals handed to a leader, by request id, with when. */
  private readonly forwarded = new Map<number, { at: number; readonly leader: Ballot }>()
  /** Forwarded proposals seen, so a duplicated message cannot propose a value twice. */
  private readonly forwardSeen = new Set<string>()
  private readonly forwardSeenOrder = new Fifo<string>()
  private readonly incarnation: number
  private lastStatusAt = -Infinity

  private out: Outputs = emptyOutputs()
  private now = 0
  private readonly selfMessages: Array<PaxosMessage> = []
  private readonly commits: Array<number> = []

  constructor(config: PaxosConfig, durable: DurableState, incarnationSeed = 0) {
    this.config = config
    this.maxInflight = Math.max(1, Math.min(config.maxInflight, CONFIG_WINDOW - 2))
    // Learned member sets; the founding one governs until the first of them (an Install's
    // list starts with the one governing its point).
    const learned = [...(durable.configs ?? [])].sort((a, b) => a.from - b.from)
    this.configs = learned.length > 0 && learned[0]!.from <= durable.chosenUpTo
      ? learned
      : [{ from: 0, voters: [...config.members], learners: [] }, ...learned]
    this.rng = { s: (config.seed ^ Math.imul(config.nodeId + 1, 0x9e3779b1) ^ incarnationSeed) | 0 }
    this.incarnation = incarnationSeed | 0
    this.promised = durable.promised
    this.proposerRound = durable.proposerRound
    this.highestRoundSeen = Math.max(durable.promised.round, durable.proposerRound)
    this.chosenUpToValue = durable.chosenUpTo
    this.compactedBelowValue = Math.min(durable.compactedBelow ?? 0, durable.chosenUpTo)
    this.maxChosen = durable.chosenUpTo - 1
    for (const a of durable.accepted) {
      if (a.instance >= durable.chosenUpTo) this.accepted.set(a.instance, { ballot: a.ballot, value: a.value })
    }
    this.windowStart = durable.chosenUpTo
    for (const c of durable.chosen) {
      this.chosen.set(c.instance, c.value)
      this.maxChosen = Math.max(this.maxChosen, c.instance)
      if (c.instance < durable.chosenUpTo) {
        this.windowStart = Math.min(this.windowStart, c.instance)
        this.windowBytes += valueBytes(c.value)
      }
    }
    this.trimWindow()
    this.refreshMembers()
  }

  // ---- member sets ----

  /** The member set of `instance` (known for instances below chosenUpTo + CONFIG_WINDOW). */
  configAt(instance: number): ConfigEntry {
    let c = this.configs[0]!
    for (const e of this.configs) {
      if (e.from > instance) break
      c = e
    }
    return c
  }

  /** Every other node of the member sets from the prefix on (voters and learners). */
  get peerIds(): ReadonlyArray<number> {
    return this.peers
  }

  /** Member sets from the chosen prefix on, the one governing it first. */
  get memberSets(): ReadonlyArray<ConfigEntry> {
    return this.configs
  }

  /** Whether `nodes` hold a quorum of `c`'s voters. */
  private isQuorum(nodes: ReadonlySet<number>, c: MemberSet): boolean {
    let n = 0
    for (const v of c.voters) if (nodes.has(v)) n++
    return n >= quorumOf(c)
  }

  /** Drops member sets no instance from the prefix on uses, and recomputes who the peers are. */
  private refreshMembers(): void {
    while (this.configs.length > 1 && this.configs[1]!.from <= this.chosenUpToValue) this.configs.shift()
    const all = new Set<number>()
    for (const c of this.configs) for (const m of [...c.voters, ...c.learners]) all.add(m)
    this.members = all
    this.peers = [...all].filter((m) => m !== this.config.nodeId).sort((a, b) => a - b)
  }

  /** A membership value chosen at `instance` sets the members of instances from instance + CONFIG_WINDOW on. */
  private noteMembership(instance: number, value: PaxosValue): void {
    const classify = this.config.membershipOf
    if (classify === undefined) return
    let set: MemberSet | undefined
    for (const v of value.values) set = classify(v) ?? set
    if (set === undefined) return
    const entry: ConfigEntry = { from: instance + CONFIG_WINDOW, voters: [...set.voters], learners: [...set.learners] }
    this.configs = withConfig(this.configs, entry)
    this.out.persist.push({ _tag: "Configured", config: entry })
    this.refreshMembers()
  }

  // ---- read-only views ----

  /** The quorum of the member set governing the chosen prefix. */
  get quorum(): number {
    return quorumOf(this.configAt(this.chosenUpToValue))
  }
  /** Whether this node votes in the newest member set it knows. */
  get isVoter(): boolean {
    return this.configs[this.configs.length - 1]!.voters.includes(this.config.nodeId)
  }
  /**
   * Whether this node may run phase 1 and lead: it votes where the prefix is (it can
   * settle what is open there) or in the newest member set (it is needed ahead). A node in
   * neither, removed or never added, does not.
   */
  get mayLead(): boolean {
    return this.isVoter || this.configAt(this.chosenUpToValue).voters.includes(this.config.nodeId)
  }
  /** Values proposed here, batches (instances with values) this node placed as leader and their values, phase 1 runs, Accepts sent again, own proposals superseded. */
  get counters(): Readonly<PaxosCounters> {
    return this.counting
  }

  get chosenUpTo(): number {
    return this.chosenUpToValue
  }
  get isLeader(): boolean {
    return this.role === "leader"
  }
  get currentRole(): Role {
    return this.role
  }
  /** The highest leader ballot heard from, and when (for status displays). */
  get leader(): { readonly ballot: Ballot | null; readonly lastContact: number } {
    return { ballot: this.knownLeader, lastContact: this.lastLeaderContact }
  }
  get promisedBallot(): Ballot {
    return this.promised
  }
  get pendingCount(): number {
    let n = this.queue.length
    for (const p of this.placed.values()) n += p.origins.length
    return n + this.forwarded.size
  }
  /**
   * Nothing waits on a timer here: no phase 1 or 2 in flight, nothing queued, placed or
   * forwarded, no peer known to be ahead. Ticks are then needed only for heartbeats.
   */
  get quiet(): boolean {
    if (this.role === "preparing" || this.inflight.size > 0 || this.queue.length > 0 || this.placed.size > 0 || this.forwarded.size > 0) {
      return false
    }
    for (const p of this.peers) if ((this.peerChosenUpTo.get(p) ?? 0) > this.chosenUpToValue) return false
    return true
  }
  chosenValue(instance: number): PaxosValue | undefined {
    return this.chosen.get(instance)
  }
  get compactedBelow(): number {
    return this.compactedBelowValue
  }
  /**
   * Peers have a longer chosen prefix, and every one of them said its log starts past this
   * node's: catch-up cannot help, the node needs an Install (the lowest such start), else null.
   */
  get needsInstall(): number | null {
    if (this.now - this.prefixMovedAt < this.config.installAfterMs) return null
    let lowest: number | null = null
    for (const p of this.informants()) {
      if ((this.peerPrefix.get(p) ?? 0) <= this.chosenUpToValue) continue
      const from = this.peerCompactedBelow.get(p) ?? 0
      if (from <= this.chosenUpToValue) return null
      if (lowest === null || from < lowest) lowest = from
    }
    return lowest
  }

  step(input: Input, now: number): Outputs {
    this.now = Math.max(this.now, now)
    this.out = emptyOutputs()
    switch (input._tag) {
      case "Propose":
        this.counting.proposed++
        this.enqueue({ node: this.config.nodeId, incarnation: this.incarnation, requestId: input.requestId }, input.value, input.urgent === true)
        this.proposeQueued()
        break
      case "Cancel": {
        this.forwarded.delete(input.requestId)
        const i = this.queue.findIndex((q) => q.origin.node === this.config.nodeId && q.origin.requestId === input.requestId)
        if (i >= 0) {
          this.queuedBytes -= this.queue[i]!.value.byteLength
          this.queue.splice(i, 1)
        }
        break
      }
      case "Receive":
        this.receive(input.from, input.message)
        break
      case "Tick":
        this.tick()
        break
      case "Lead":
        if (this.role === "follower" && this.now >= this.backoffUntil) this.startPrepare()
        break
      case "Compact":
        this.compact(Math.min(input.below, this.chosenUpToValue))
        break
      case "Install":
        this.install(input.upTo, input.configs)
        break
      case "PauseCatchup":
        this.catchupPaused = input.paused
        break
      case "WriteBacklog":
        this.writeBacklog = input.over
        // Caught up with the disk: the next slice at once, not at the next tick (slices
        // already on their way are not asked again: see catchupOut).
        if (!input.over) this.catchupSentAt = -Infinity
        this.maybeCatchup()
        break
    }
    this.drainSelf()
    // Phase 1 may end once catch-up brought the prefix to the promisers'.
    if (this.role === "preparing") {
      this.tryLead()
      this.drainSelf()
    }
    this.flushCommits()
    const out = this.out
    this.out = emptyOutputs()
    return out
  }

  // ---- plumbing ----

  /**
   * A message to ourselves that vouches for records (our own Promise, Accepted, Prepare) is
   * an output like any other: the driver hands it back as an input once the records are
   * durable, so our own acceptor counts only with what is on disk. Others are handled
   * inside the step.
   */
  private sendTo(to: number, message: PaxosMessage): void {
    if (to === this.config.nodeId && sendsBeforePersist(message)) this.selfMessages.push(message)
    else this.out.send.push({ to, message })
  }

  private broadcast(message: PaxosMessage, includeSelf: boolean): void {
    for (const p of this.peers) this.out.send.push({ to: p, message })
    if (includeSelf) this.sendTo(this.config.nodeId, message)
  }

  private drainSelf(): void {
    while (this.selfMessages.length > 0) {
      const m = this.selfMessages.shift()!
      this.receive(this.config.nodeId, m)
    }
  }

  private flushCommits(): void {
    if (this.commits.length === 0) return
    const instances = this.commits.splice(0)
    this.broadcast({ _tag: "Commit", ballot: this.ballot, instances }, false)
  }

  private random(min: number, max: number): number {
    return min + Math.floor(nextRandom(this.rng) * (max - min + 1))
  }

  private seeRound(b: Ballot): void {
    if (b.round > this.highestRoundSeen) this.highestRoundSeen = b.round
  }

  // ---- message handling ----

  private receive(from: number, m: PaxosMessage): void {
    // A node outside every member set from the prefix on (removed, or never added) neither
    // runs phases nor proposes here: it cannot disturb the members.
    if ((m._tag === "Prepare" || m._tag === "Accept" || m._tag === "Forward") && from !== this.config.nodeId && !this.members.has(from)) return
    switch (m._tag) {
      case "Prepare":
        return this.onPrepare(from, m)
      case "Promise":
        return this.onPromise(from, m)
      case "Accept":
        return this.onAccept(from, m)
      case "Accepted":
        return this.onAccepted(from, m)
      case "Nack":
        return this.onNack(m)
      case "Commit":
        return this.onCommit(from, m)
      case "Status":
        return this.onStatus(from, m)
      case "CatchupRequest":
        return this.onCatchupRequest(from, m)
      case "CatchupReply":
        return this.onCatchupReply(from, m)
      case "Forward":
        return this.onForward(m)
      case "ForwardResult":
        return this.onForwardResult(m)
    }
  }

  private onForward(m: MessageOf<"Forward">): void {
    for (const p of m.proposals) {
      const key = `${m.origin}/${m.incarnation}/${p.requestId}`
      if (this.forwardSeen.has(key)) continue
      this.forwardSeen.add(key)
      this.forwardSeenOrder.push(key)
      // Bounded memory: duplicates only arrive close together (TCP resends nothing after a reconnect).
      if (this.forwardSeen.size > 100_000) this.forwardSeen.delete(this.forwardSeenOrder.shift()!)
      this.enqueue({ node: m.origin, incarnation: m.incarnation, requestId: p.requestId }, p.value)
    }
    this.proposeQueued()
  }

  private onForwardResult(m: MessageOf<"ForwardResult">): void {
    if (m.incarnation !== this.incarnation) return
    for (const r of m.results) {
      if (!this.forwarded.delete(r.requestId)) continue
      this.out.results.push(
        r.index === null
          ? (this.counting.superseded++, { _tag: "Superseded", requestId: r.requestId, instance: r.instance })
          : { _tag: "Chosen", requestId: r.requestId, instance: r.instance, index: r.index }
      )
    }
  }

  private enqueue(origin: Origin, value: Uint8Array, urgent = false): void {
    const q: Queued = { origin, value, at: this.now, urgent }
    // Urgent ones go after the urgent ones already queued, ahead of the rest.
    const at = urgent ? this.queue.findIndex((x) => !x.urgent) : -1
    if (at >= 0) this.queue.splice(at, 0, q)
    else this.queue.push(q)
    this.queuedBytes += value.byteLength
  }

  /** The leader we would hand proposals to: another node, heard from recently, not distrusted. */
  private activeLeader(): number | undefined {
    const l = this.knownLeader
    if (l === null || l.node === this.config.nodeId || this.role !== "follower") return undefined
    if (this.now - this.lastLeaderContact >= this.config.leaderTimeoutMs) return undefined
    if (this.distrusted !== null && compareBallot(l, this.distrusted) <= 0) return undefined
    return l.node
  }

  /**
   * Another node that may lead, at random (undefined: none): a voter of the newest member
   * set or of the one governing the prefix. Only the latter can settle an open instance
   * there, and the newest set's voters may not know their set yet (the simulation's seed
   * 1529 once catch-up was pipelined: the prefix's only voter had no work, and proposals
   * went round the others for ever).
   */
  private someVoter(): number | undefined {
    const newest = this.configs[this.configs.length - 1]!.voters
    const others = [...new Set([...newest, ...this.configAt(this.chosenUpToValue).voters])].filter((v) => v !== this.config.nodeId)
    return others.length === 0 ? undefined : others[this.random(0, others.length - 1)]
  }

  /** Queued proposals go into our own instances if we lead, else to the active leader, else we run. */
  private proposeQueued(): void {
    if (this.queue.length === 0) return
    if (this.role === "leader") return this.flushQueue()
    if (this.role === "preparing") return
    // A node that may not run (not a voter) with no leader known hands its proposals to a voter, which runs.
    const leader = this.activeLeader() ?? (this.mayLead ? undefined : this.someVoter())
    if (leader !== undefined) {
      const batch = this.queue.splice(0)
      this.queuedBytes = 0
      const own = batch.filter((q) => q.origin.node === this.config.nodeId && q.origin.incarnation === this.incarnation)
      for (const q of own) this.forwarded.set(q.origin.requestId, { at: this.now, leader: this.knownLeader ?? ZeroBallot })
      // Proposals forwarded to us by others travel on with their origin, in messages of their own.
      const byOrigin = new Map<string, Array<Queued>>()
      for (const q of batch) {
        const key = `${q.origin.node}/${q.origin.incarnation}`
        byOrigin.set(key, [...(byOrigin.get(key) ?? []), q])
      }
      for (const group of byOrigin.values()) {
        const o = group[0]!.origin
        const proposals = group.map((q) => ({ requestId: q.origin.requestId, value: q.value }))
        this.sendTo(leader, { _tag: "Forward", origin: o.node, incarnation: o.incarnation, proposals })
      }
      return
    }
    if (this.now >= this.backoffUntil) this.startPrepare()
  }

  private promise(ballot: Ballot): void {
    if (compareBallot(ballot, this.promised) > 0) {
      this.promised = ballot
      this.out.persist.push({ _tag: "Promised", ballot })
      // A higher ballot elsewhere ends our own leadership attempt.
      if (this.role !== "follower" && compareBallot(ballot, this.ballot) > 0) this.stepDown()
    }
  }

  private onPrepare(from: number, m: MessageOf<"Prepare">): void {
    this.seeRound(m.ballot)
    if (compareBallot(m.ballot, this.promised) < 0) {
      this.sendTo(from, { _tag: "Nack", ballot: m.ballot, promised: this.promised })
      return
    }
    this.promise(m.ballot)
    const entries: Array<PromiseEntry> = []
    const top = Math.max(this.maxChosen, this.maxAccepted())
    for (let i = this.chosenUpToValue; i <= top; i++) {
      const c = this.chosen.get(i)
      if (c !== undefined) {
        entries.push({ instance: i, ballot: null, value: c })
        continue
      }
      const a = this.accepted.get(i)
      if (a !== undefined) entries.push({ instance: i, ballot: a.ballot, value: a.value })
    }
    this.sendTo(from, { _tag: "Promise", ballot: m.ballot, chosenUpTo: this.chosenUpToValue, entries })
  }

  private maxAccepted(): number {
    let max = -1
    for (const i of this.accepted.keys()) if (i > max) max = i
    return max
  }

  private onAccept(from: number, m: MessageOf<"Accept">): void {
    this.seeRound(m.ballot)
    if (compareBallot(m.ballot, this.promised) < 0) {
      this.sendTo(from, { _tag: "Nack", ballot: m.ballot, promised: this.promised })
      return
    }
    this.promise(m.ballot)
    if (from !== this.config.nodeId) this.noteLeader(m.ballot)
    if (m.instance < this.chosenUpToValue || this.chosen.has(m.instance)) {
      // Known chosen: the log keeps the chosen value (one value per instance), never an
      // Accept of a stale leader. Only the chosen value itself is acknowledged (a leader
      // settling the instance again); nothing else could reach a majority anyway.
      const v = this.chosen.get(m.instance)
      if (v !== undefined && valueEquals(v, m.value)) this.sendTo(from, { _tag: "Accepted", ballot: m.ballot, instance: m.instance })
      return
    }
    this.accepted.set(m.instance, { ballot: m.ballot, value: m.value })
    this.out.persist.push({ _tag: "Accepted", instance: m.instance, ballot: m.ballot, value: m.value })
    this.sendTo(from, { _tag: "Accepted", ballot: m.ballot, instance: m.instance })
  }

  private noteLeader(b: Ballot): void {
    if (this.knownLeader === null || compareBallot(b, this.knownLeader) >= 0) {
      this.knownLeader = b
      this.lastLeaderContact = this.now
    }
  }

  private onNack(m: MessageOf<"Nack">): void {
    this.seeRound(m.promised)
    if (this.role !== "follower" && ballotEquals(m.ballot, this.ballot) && compareBallot(m.promised, this.ballot) > 0) {
      this.stepDown()
    }
  }

  private stepDown(): void {
    this.role = "follower"
    this.promises = new Map()
    // In-flight instances stay in `placed`: whoever leads next settles them and we learn the outcome.
    this.inflight.clear()
    this.backoffUntil = this.now + this.random(this.config.backoffMinMs, this.config.backoffMaxMs)
  }

  private startPrepare(): void {
    // Only a voter runs (a learner, or a node removed, hands its proposals to the leader).
    if (!this.mayLead) {
      this.stepDown()
      return
    }
    const round = Math.max(this.proposerRound, this.highestRoundSeen) + 1
    this.proposerRound = round
    this.highestRoundSeen = round
    // Never reuse a ballot after a restart: the round is on disk before any Prepare leaves.
    this.out.persist.push({ _tag: "ProposerRound", round })
    this.ballot = { round, node: this.config.nodeId }
    this.counting.prepares++
    this.role = "preparing"
    this.promises = new Map()
    this.prepareSentAt = this.now
    this.batchSeq = 0
    this.broadcast({ _tag: "Prepare", ballot: this.ballot }, true)
  }

  private onPromise(from: number, m: MessageOf<"Promise">): void {
    if (!ballotEquals(m.ballot, this.ballot) || this.role === "follower") return
    // What a promiser knows chosen is chosen, whoever it is.
    for (const e of m.entries) if (e.ballot === null) this.learn(e.instance, e.value)
    if (m.chosenUpTo > (this.peerChosenUpTo.get(from) ?? 0)) this.peerChosenUpTo.set(from, m.chosenUpTo)
    this.peerPrefix.set(from, m.chosenUpTo)
    if (this.role === "leader") {
      // A late promise (a member set's new voter): it counts from the next instance not yet
      // placed, with what it accepted there.
      this.promisers.add(from)
      for (const e of m.entries) {
        if (e.ballot === null || e.instance < this.nextInstance) continue
        this.recover(e.instance, e.ballot, e.value)
      }
      this.flushQueue()
      return
    }
    this.promises.set(from, m)
    this.tryLead()
  }

  /** Keeps the highest-ballot accepted value reported for an instance. */
  private recover(instance: number, ballot: Ballot, value: PaxosValue): void {
    const cur = this.recovered.get(instance)
    if (cur === undefined || compareBallot(ballot, cur.ballot) > 0) this.recovered.set(instance, { ballot, value })
    if (instance > this.recoverTop) this.recoverTop = instance
  }

  /**
   * Phase 1 ends once this node has learned every instance some promiser knows chosen (the
   * member sets of the instances it will place follow from them) and the promises hold a
   * quorum of every member set governing [start, start + CONFIG_WINDOW).
   */
  private tryLead(): void {
    if (this.role !== "preparing") return
    // Instances below the highest chosen prefix are chosen already: we learn them by
    // catch-up and never propose into them.
    let start = this.chosenUpToValue
    for (const p of this.promises.values()) start = Math.max(start, p.chosenUpTo)
    if (start > this.chosenUpToValue) return
    const promisers = new Set(this.promises.keys())
    const first = this.configAt(start)
    for (const c of this.configs) {
      if (c.from >= start + CONFIG_WINDOW) break
      if (c.from < first.from) continue
      if (!this.isQuorum(promisers, c)) return
    }
    this.recovered.clear()
    this.recoverTop = start - 1
    for (const p of this.promises.values()) {
      for (const e of p.entries) if (e.ballot !== null && e.instance >= start) this.recover(e.instance, e.ballot, e.value)
    }
    for (const i of this.chosen.keys()) if (i >= start && i > this.recoverTop) this.recoverTop = i
    // Our own batches from an earlier term that no promiser accepted: re-propose them in
    // the same instance (never elsewhere, so no value can be chosen twice).
    for (const i of this.placed.keys()) if (i > this.recoverTop) this.recoverTop = i

    this.role = "leader"
    this.promisers = promisers
    this.promises = new Map()
    this.knownLeader = this.ballot
    this.nextInstance = start
    this.flushQueue()
  }

  private sendAccept(instance: number, value: PaxosValue): void {
    this.inflight.set(instance, { value, acks: new Set(), sentAt: this.now })
    this.broadcast({ _tag: "Accept", ballot: this.ballot, instance, value }, true)
  }

  private onAccepted(from: number, m: MessageOf<"Accepted">): void {
    if (this.role !== "leader" || !ballotEquals(m.ballot, this.ballot)) return
    const f = this.inflight.get(m.instance)
    if (f === undefined) return
    // Only the instance's own voters count (learners accept too, harmlessly).
    const c = this.configAt(m.instance)
    if (!c.voters.includes(from)) return
    f.acks.add(from)
    if (f.acks.size < quorumOf(c)) return
    this.inflight.delete(m.instance)
    this.learn(m.instance, f.value)
    this.commits.push(m.instance)
    this.flushQueue()
  }

  private onCommit(from: number, m: MessageOf<"Commit">): void {
    if (this.members.has(from)) this.noteLeader(m.ballot)
    let hint = this.peerChosenUpTo.get(from) ?? 0
    for (const i of m.instances) {
      const a = this.accepted.get(i)
      if (a !== undefined && ballotEquals(a.ballot, m.ballot)) this.learn(i, a.value)
      else if (i + 1 > hint) hint = i + 1
    }
    this.peerChosenUpTo.set(from, hint)
  }

  private onStatus(from: number, m: MessageOf<"Status">): void {
    // A removed leader is not followed (nobody hands it proposals).
    if (m.leader !== null && this.members.has(from)) this.noteLeader(m.leader)
    const known = this.peerChosenUpTo.get(from) ?? 0
    this.peerChosenUpTo.set(from, Math.max(known, m.chosenUpTo, m.maxChosen + 1))
    this.peerPrefix.set(from, m.chosenUpTo)
  }

  private onCatchupRequest(from: number, m: MessageOf<"CatchupRequest">): void {
    if (m.from < this.compactedBelowValue) {
      this.sendTo(from, { _tag: "CatchupReply", entries: [], compactedBelow: this.compactedBelowValue })
      return
    }
    const count = Math.max(1, Math.min(m.count, this.config.catchupBatch))
    if (m.from < this.windowStart) {
      // Storage holds one value per instance, chosen or only accepted: read below the prefix only.
      this.out.readChosen.push({
        to: from,
        from: m.from,
        count: Math.min(count, this.chosenUpToValue - m.from),
        maxBytes: this.config.catchupMaxBytes
      })
      return
    }
    const entries: Array<ChosenEntry> = []
    let bytes = 0
    for (let i = m.from; i < m.from + count && i <= this.maxChosen; i++) {
      const v = this.chosen.get(i)
      if (v === undefined) continue
      const size = valueBytes(v)
      if (entries.length > 0 && bytes + size > this.config.catchupMaxBytes) break
      bytes += size
      entries.push({ instance: i, value: v })
    }
    this.sendTo(from, { _tag: "CatchupReply", entries })
  }

  private onCatchupReply(from: number, m: MessageOf<"CatchupReply">): void {
    if (m.compactedBelow !== undefined) this.peerCompactedBelow.set(from, m.compactedBelow)
    // The request it answers: from that peer, covering its first entry (replies from
    // storage and from memory may come out of order).
    const first = m.entries[0]?.instance
    const answered = this.catchupOut.findIndex((r) => r.peer === from && (first === undefined || (r.from <= first && first < r.end)))
    if (answered >= 0) this.catchupOut.splice(answered, 1)
    let bytes = 0
    let learned = 0
    for (const e of m.entries) {
      bytes += valueBytes(e.value)
      if (this.learn(e.instance, e.value)) learned++
    }
    if (m.entries.length > 0) {
      const perValue = bytes / m.entries.length
      this.catchupSpan = Math.max(1, Math.min(this.config.catchupBatch, Math.floor(this.config.catchupMaxBytes / Math.max(1, perValue))))
    }
    // Progress: ask for the next slice at once instead of waiting for a tick. A reply of
    // values known already (a peer that lacks the one we miss) waits catchupRetryMs: asking
    // at once would have the peers send the same values again round after round.
    if (learned > 0) {
      this.catchupSentAt = -Infinity
      this.maybeCatchup()
    }
  }

  // ---- learner ----

  /** Records `instance` as chosen; false when it was known already (below the prefix or learned). */
  private learn(instance: number, value: PaxosValue): boolean {
    if (instance < this.chosenUpToValue || this.chosen.has(instance)) return false
    this.chosen.set(instance, value)
    if (instance > this.maxChosen) this.maxChosen = instance
    this.noteMembership(instance, value)
    // The value accepted here (the same object) is on its way to disk already.
    if (this.accepted.get(instance)?.value !== value) this.out.persist.push({ _tag: "Chosen", instance, value })
    this.inflight.delete(instance)
    const p = this.placed.get(instance)
    if (p !== undefined) {
      this.placed.delete(instance)
      const ours = p.value === value || valueEquals(p.value, value)
      const remote = new Map<string, MessageOf<"ForwardResult">>()
      p.origins.forEach((o, i) => {
        const index = ours ? i : null
        if (o.node === this.config.nodeId && o.incarnation === this.incarnation) {
          const requestId = o.requestId
          if (index === null) this.counting.superseded++
          this.out.results.push(index !== null ? { _tag: "Chosen", requestId, instance, index } : { _tag: "Superseded", requestId, instance })
          return
        }
        const key = `${o.node}/${o.incarnation}`
        const r = remote.get(key) ?? { _tag: "ForwardResult", incarnation: o.incarnation, results: [] }
        remote.set(key, { ...r, results: [...r.results, { requestId: o.requestId, instance, index }] })
      })
      for (const [key, r] of remote) this.sendTo(Number(key.split("/")[0]), r)
    }
    let advanced = false
    while (this.chosen.has(this.chosenUpToValue)) {
      const i = this.chosenUpToValue
      const v = this.chosen.get(i)!
      this.out.chosen.push({ instance: i, value: v })
      this.accepted.delete(i)
      this.chosenUpToValue++
      this.windowBytes += valueBytes(v)
      advanced = true
    }
    if (advanced) {
      this.prefixMovedAt = this.now
      this.trimWindow()
      if (this.configs.length > 1 && this.configs[1]!.from <= this.chosenUpToValue) this.refreshMembers()
      // The window moved: instances whose member sets are now known may be placed.
      if (this.role === "leader") this.flushQueue()
    }
    return true
  }

  /** Values below `below` are gone from storage: forget them here too. */
  private compact(below: number): void {
    if (below <= this.compactedBelowValue) return
    this.compactedBelowValue = below
    while (this.windowStart < below) {
      const v = this.chosen.get(this.windowStart)
      if (v !== undefined) {
        this.windowBytes -= valueBytes(v)
        this.chosen.delete(this.windowStart)
      }
      this.windowStart++
    }
  }

  /**
   * Jumps the chosen prefix to `upTo` (see Input "Install"). What was accepted or placed
   * below it is dropped: those instances are chosen, whatever with, and a proposal placed
   * there is left to its caller's timeout (its outcome cannot be known here).
   */
  private install(upTo: number, configs: ReadonlyArray<ConfigEntry>): void {
    if (upTo <= this.chosenUpToValue) return
    // The member sets up to there come with the installed state; ours from later
    // instances (learned beyond the gap) stay.
    const given = configs.length > 0 ? [...configs] : [this.configAt(upTo)]
    const last = Math.max(...given.map((c) => c.from))
    this.configs = [...given, ...this.configs.filter((c) => c.from > last && c.from >= upTo + CONFIG_WINDOW)].sort((a, b) => a.from - b.from)
    this.out.persist.push({ _tag: "Installed", upTo, configs: this.configs })
    for (const i of [...this.accepted.keys()]) if (i < upTo) this.accepted.delete(i)
    for (const i of [...this.inflight.keys()]) if (i < upTo) this.inflight.delete(i)
    for (const i of [...this.placed.keys()]) if (i < upTo) this.placed.delete(i)
    for (const i of [...this.chosen.keys()]) if (i < upTo) this.chosen.delete(i)
    this.chosenUpToValue = upTo
    this.compactedBelowValue = upTo
    this.windowStart = upTo
    this.windowBytes = 0
    if (this.maxChosen < upTo - 1) this.maxChosen = upTo - 1
    this.out.installed = upTo
    this.refreshMembers()
    // Values learned beyond the old prefix may now extend the new one.
    const known = this.chosen.get(upTo)
    if (known !== undefined) {
      this.chosen.delete(upTo)
      this.learn(upTo, known)
    }
  }

  /** Forgets the oldest chosen values below the prefix beyond the window's count and bytes (the newest stays). */
  private trimWindow(): void {
    const c = this.config
    while (
      this.windowStart < this.chosenUpToValue - 1 &&
      (this.chosenUpToValue - this.windowStart > c.memoryWindow || this.windowBytes > c.memoryWindowBytes)
    ) {
      const v = this.chosen.get(this.windowStart)
      if (v !== undefined) {
        this.windowBytes -= valueBytes(v)
        this.chosen.delete(this.windowStart)
      }
      this.windowStart++
    }
  }

  /**
   * Whom this node can learn from: its peers, and any node that told it how far it got (a
   * node that was just added knows only the member set it started with).
   */
  private informants(): ReadonlyArray<number> {
    const all = new Set(this.peers)
    for (const p of this.peerChosenUpTo.keys()) if (p !== this.config.nodeId) all.add(p)
    return [...all].sort((a, b) => a - b)
  }

  private catchupPaused = false
  private writeBacklog = false

  private maybeCatchup(): void {
    if (this.catchupPaused || this.writeBacklog) return
    const out = this.catchupOut
    if (out.length > 0 && this.now - out[0]!.sentAt >= this.config.catchupReplyTimeoutMs) out.length = 0
    // Slices below the prefix were learned otherwise: their replies are not waited for.
    for (let i = out.length - 1; i >= 0; i--) if (out[i]!.end <= this.chosenUpToValue) out.splice(i, 1)
    if (this.now - this.catchupSentAt < this.config.catchupRetryMs) return
    // One request until a reply tells how many instances one carries, then a pipeline of them.
    const limit = this.catchupSpan === null ? 1 : this.config.catchupPipeline
    while (out.length < limit) {
      let from = this.chosenUpToValue
      for (;;) {
        const covering = out.find((r) => r.from <= from && from < r.end)
        if (covering !== undefined) from = covering.end
        else if (this.chosen.has(from)) from++
        else break
      }
      const ahead = this.informants().filter((p) => (this.peerChosenUpTo.get(p) ?? 0) > from)
      if (ahead.length === 0) return
      let end = from + (this.catchupSpan ?? this.config.catchupBatch)
      for (const r of out) if (r.from > from && r.from < end) end = r.from
      // Rotate among peers that are ahead, so one that lacks an entry does not stall us.
      const peer = ahead[this.catchupPeerIndex++ % ahead.length]!
      this.catchupSentAt = this.now
      out.push({ peer, from, end, sentAt: this.now })
      this.sendTo(peer, { _tag: "CatchupRequest", from, count: end - from })
    }
  }

  // ---- proposer ----

  /**
   * Places values in instances, in order, while their member sets are known (below the
   * prefix + CONFIG_WINDOW) and this ballot holds a quorum of each: first what phase 1
   * recovered (up to recoverTop, gaps as no-ops), then queued values (at most maxInflight
   * in flight, one more for an urgent one), then, after a membership change, no-ops until
   * the window reaches the new member set (so that it takes effect without waiting for traffic).
   * A member set whose voters did not promise this ballot needs a new phase 1.
   */
  private flushQueue(): void {
    while (this.role === "leader") {
      // A newer leader may have chosen instances we learned by catch-up: never place there.
      while (this.nextInstance < this.chosenUpToValue || this.chosen.has(this.nextInstance)) this.nextInstance++
      const instance = this.nextInstance
      if (instance >= this.chosenUpToValue + CONFIG_WINDOW) return
      const recovering = instance <= this.recoverTop
      const pendingConfig = this.configs[this.configs.length - 1]!.from > instance
      if (!recovering && this.queue.length === 0 && !pendingConfig) return
      const limit = this.maxInflight + (this.queue[0]?.urgent === true ? 1 : 0)
      if (!recovering && this.inflight.size >= limit) return
      // A leader removed from both stops: a voter takes over (and settles any gap left here).
      if (!this.mayLead) {
        this.stepDown()
        return
      }
      if (!this.isQuorum(this.promisers, this.configAt(instance))) {
        this.inflight.clear()
        this.startPrepare()
        return
      }
      this.nextInstance++
      if (recovering) {
        const value: PaxosValue = this.recovered.get(instance)?.value ?? this.placed.get(instance)?.value ??
          { proposer: this.config.nodeId, round: this.ballot.round, seq: this.batchSeq++, values: [] }
        this.recovered.delete(instance)
        this.sendAccept(instance, value)
        continue
      }
      if (this.queue.length === 0) {
        this.sendAccept(instance, { proposer: this.config.nodeId, round: this.ballot.round, seq: this.batchSeq++, values: [] })
        continue
      }
      const urgent = this.queue[0]!.urgent
      let n = 0
      let bytes = 0
      while (n < this.queue.length && n < this.config.batchMaxCount && this.queue[n]!.urgent === urgent) {
        const b = this.queue[n]!.value.byteLength
        if (n > 0 && bytes + b > this.config.batchMaxBytes) break
        bytes += b
        n++
      }
      const batch = this.queue.splice(0, n)
      this.queuedBytes -= bytes
      const value: PaxosValue = {
        proposer: this.config.nodeId,
        round: this.ballot.round,
        seq: this.batchSeq++,
        values: batch.map((q) => q.value)
      }
      this.placed.set(instance, { value, origins: batch.map((q) => q.origin), at: this.now })
      this.counting.batches++
      this.counting.batchedValues += batch.length
      this.sendAccept(instance, value)
    }
  }

  private tick(): void {
    const c = this.config
    if (this.role === "preparing" && this.now - this.prepareSentAt >= c.prepareRetryMs) {
      // Lost messages: ask the silent acceptors again with the same ballot.
      this.prepareSentAt = this.now
      for (const p of [this.config.nodeId, ...this.peers]) {
        if (!this.promises.has(p)) this.sendTo(p, { _tag: "Prepare", ballot: this.ballot })
      }
    }
    if (this.role === "leader") {
      for (const [instance, f] of this.inflight) {
        if (this.now - f.sentAt < c.acceptRetransmitMs) continue
        f.sentAt = this.now
        this.counting.acceptRetransmits++
        // To the instance's voters that have not answered (learners get what they miss by catch-up).
        for (const p of this.configAt(instance).voters) {
          if (p !== this.config.nodeId && !f.acks.has(p)) this.sendTo(p, { _tag: "Accept", ballot: this.ballot, instance, value: f.value })
        }
      }
      this.flushQueue()
    }
    if (this.role === "follower") {
      // A leader that leaves forwarded proposals unanswered gets no more of them.
      for (const f of this.forwarded.values()) {
        if (this.now - f.at < c.leaderTimeoutMs) continue
        f.at = Infinity
        if (this.knownLeader !== null && ballotEquals(f.leader, this.knownLeader)) this.distrusted = this.knownLeader
      }
      this.proposeQueued()
    }
    if (this.role === "follower" && this.now >= this.backoffUntil) {
      // Placed proposals are settled by whoever leads; if that has not happened for a while
      // (the leader may never touch the instance), we take over and settle them ourselves.
      let stale = false
      for (const p of this.placed.values()) if (this.now - p.at >= c.leaderTimeoutMs) stale = true
      // A gap nobody settles: instances beyond the prefix are chosen, the prefix has not
      // moved for a while and no leader is heard (the one that left it may have been removed).
      const gap = this.maxChosen > this.chosenUpToValue && this.now - this.prefixMovedAt >= c.leaderTimeoutMs &&
        this.now - this.lastLeaderContact >= c.leaderTimeoutMs
      if ((stale || gap) && this.mayLead) this.startPrepare()
    }
    if (this.now - this.lastStatusAt >= c.statusIntervalMs) {
      this.lastStatusAt = this.now
      this.broadcast(
        {
          _tag: "Status",
          chosenUpTo: this.chosenUpToValue,
          maxChosen: this.maxChosen,
          leader: this.role === "leader" ? this.ballot : null
        },
        false
      )
    }
    this.maybeCatchup()
  }
}

/**
 * The durable image a driver keeps, as data (simulation, tests): one value per instance
 * (ballot null: learned chosen), and the chosen-prefix hint of the last write.
 */
export interface DurableImage {
  promised: Ballot
  proposerRound: number
  readonly log: Map<number, { ballot: Ballot | null; value: PaxosValue }>
  chosenUpTo: number
  /** Nothing below it is kept. */
  compactedBelow: number
  /** Member sets learned (empty: the founding one). */
  configs: Array<ConfigEntry>
}

export const emptyDurableImage = (): DurableImage => ({ promised: ZeroBallot, proposerRound: 0, log: new Map(), chosenUpTo: 0, compactedBelow: 0, configs: [] })

/** Adds a member set to a list kept in `from` order (one per `from`: the later write wins). */
export const withConfig = (configs: ReadonlyArray<ConfigEntry>, c: ConfigEntry): Array<ConfigEntry> =>
  [...configs.filter((x) => x.from !== c.from), c].sort((a, b) => a.from - b.from)

/** Drops the values below `below` from a durable image (log compaction: below its chosen prefix only). */
export const compactImage = (state: DurableImage, below: number): void => {
  if (below <= state.compactedBelow) return
  state.compactedBelow = below
  for (const i of [...state.log.keys()]) if (i < below) state.log.delete(i)
}

/** Applies one write (its records and the chosen-prefix hint it carries) to a durable image. */
export const applyRecords = (state: DurableImage, records: ReadonlyArray<PersistRecord>, chosenUpTo: number): void => {
  for (const r of records) {
    switch (r._tag) {
      case "Promised":
        if (compareBallot(r.ballot, state.promised) > 0) state.promised = r.ballot
        break
      case "ProposerRound":
        if (r.round > state.proposerRound) state.proposerRound = r.round
        break
      case "Accepted":
        state.log.set(r.instance, { ballot: r.ballot, value: r.value })
        break
      case "Chosen":
        state.log.set(r.instance, { ballot: null, value: r.value })
        break
      case "Installed":
        if (r.upTo > state.chosenUpTo) state.chosenUpTo = r.upTo
        compactImage(state, r.upTo)
        state.configs = [...r.configs]
        break
      case "Configured":
        state.configs = withConfig(state.configs, r.config)
        break
    }
  }
  if (records.length > 0 && chosenUpTo > state.chosenUpTo) state.chosenUpTo = chosenUpTo
}

/**
 * What a node restarts from, given its durable image: every instance below the hint is
 * chosen (its value is the one stored), and so is every one stored with ballot null; the
 * rest are accepted. `window` chosen values below the prefix are kept.
 */
export const durableStateOf = (d: DurableImage, window: number): DurableState => {
  let chosenUpTo = d.chosenUpTo
  while (d.log.get(chosenUpTo)?.ballot === null) chosenUpTo++
  const accepted: Array<DurableState["accepted"][number]> = []
  const chosen: Array<ChosenEntry> = []
  for (const [instance, e] of [...d.log].sort((a, b) => a[0] - b[0])) {
    if (instance < chosenUpTo) {
      if (instance >= chosenUpTo - window) chosen.push({ instance, value: e.value })
    } else if (e.ballot === null) chosen.push({ instance, value: e.value })
    else accepted.push({ instance, ballot: e.ballot, value: e.value })
  }
  return { promised: d.promised, proposerRound: d.proposerRound, accepted, chosen, chosenUpTo, compactedBelow: d.compactedBelow, configs: d.configs }
}

export { valueBytes }
