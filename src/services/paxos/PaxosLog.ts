/**
 * The replicated log of one node: drives the pure Paxos core with Effect's clock, the
 * PaxosStorage write-ahead log and the PeerNetwork (TCP in a node).
 *
 * The core is stepped right where an input arrives (a peer message, a proposal, a tick);
 * its records go to storage at once, and what must wait for them (docs/commit-path.md)
 * is sent once they are synced. Writes issued in one turn of the event loop are synced
 * together: group commit falls out of the driver.
 */
import { Context, Data, Effect, Layer, Queue, Schedule, Schema, Scope, Stream } from "effect"
import {
  type ConfigEntry,
  defaultPaxosConfig,
  type MemberSet,
  type Input,
  type Outputs,
  type PaxosConfig,
  type PaxosCounters,
  PaxosNode,
  type ProposalResult,
  isBlank,
  sendsBeforePersist
} from "../../domain/paxos/core.js"
import { type ChosenEntry, PaxosMessage, type PaxosValue, valueBytes } from "../../domain/paxos/messages.js"
import { NotEnoughNodes, ProposeError, ProposeTimeout, Superseded, ValueTooLarge } from "../../domain/paxos/errors.js"
import { Histogram, type HistogramSummary } from "../../domain/metrics/histogram.js"
import { PaxosStorage, StorageError } from "./PaxosStorage.js"
import * as Transport from "./Transport.js"
import { forkScopedLogged } from "../fibers.js"
import * as Time from "../time.js"
import type { PeerTls } from "../tls/PeerTls.js"

/** Unwritten value bytes at which catch-up waits for the disk: two of the core's 4 MiB slices. */
const CATCHUP_WRITE_BACKLOG_BYTES = 8 * 1024 * 1024

/** A client (bench, tests, later the agent's tools) proposes over the peer port. */
export const ClientMessage = Schema.Union([
  Schema.TaggedStruct("ClientPropose", { id: Schema.Int, value: Schema.Uint8Array }),
  Schema.TaggedStruct("ClientChosen", { id: Schema.Int, instance: Schema.Int, index: Schema.Int }),
  Schema.TaggedStruct("ClientFailed", { id: Schema.Int, error: ProposeError }),
  Schema.TaggedStruct("ClientStatus", { id: Schema.Int }),
  Schema.TaggedStruct("ClientStatusReply", {
    id: Schema.Int,
    role: Schema.Literals(["follower", "preparing", "leader"]),
    chosenUpTo: Schema.Int
  })
])
export type ClientMessage = typeof ClientMessage.Type

export const NodeMessage = Schema.Union([PaxosMessage, ClientMessage])
export type NodeMessage = typeof NodeMessage.Type

// ---------------------------------------------------------------------------
// Fast codec for the messages of the steady-state path (Accept, Accepted, Commit and the
// client's propose/chosen). It checks exactly what NodeMessage checks and builds the same
// objects; anything it does not recognise goes through the schema, which reports errors.
// ---------------------------------------------------------------------------

type Plain = { readonly [key: string]: unknown }
const isPlain = (u: unknown): u is Plain =>
  typeof u === "object" && u !== null && Object.getPrototypeOf(u) === Object.prototype
const isInt = (u: unknown): u is number => Number.isSafeInteger(u)
const isInstance = (u: unknown): u is number => Number.isSafeInteger(u) && (u as number) >= 0

const fastBallot = (u: unknown): { round: number; node: number } | undefined =>
  isPlain(u) && isInt(u.round) && isInt(u.node) ? { round: u.round, node: u.node } : undefined

const fastValue = (u: unknown) => {
  if (!isPlain(u) || !isInt(u.proposer) || !isInt(u.round) || !isInt(u.seq) || !Array.isArray(u.values)) return undefined
  const values: Array<Uint8Array> = new Array(u.values.length)
  for (let i = 0; i < u.values.length; i++) {
    const v: unknown = u.values[i]
    if (!(v instanceof Uint8Array)) return undefined
    values[i] = v
  }
  return { proposer: u.proposer, round: u.round, seq: u.seq, values }
}

const fastDecode = (u: unknown): NodeMessage | undefined => {
  if (!isPlain(u)) return undefined
  switch (u._tag) {
    case "Accept": {
      const ballot = fastBallot(u.ballot)
      const value = fastValue(u.value)
      if (ballot === undefined || value === undefined || !isInstance(u.instance)) return undefined
      return { _tag: "Accept", ballot, instance: u.instance, value }
    }
    case "Accepted": {
      const ballot = fastBallot(u.ballot)
      if (ballot === undefined || !isInstance(u.instance)) return undefined
      return { _tag: "Accepted", ballot, instance: u.instance }
    }
    case "Commit": {
      const ballot = fastBallot(u.ballot)
      if (ballot === undefined || !Array.isArray(u.instances)) return undefined
      const instances: Array<number> = new Array(u.instances.length)
      for (let i = 0; i < u.instances.length; i++) {
        const n: unknown = u.instances[i]
        if (!isInstance(n)) return undefined
        instances[i] = n
      }
      return { _tag: "Commit", ballot, instances }
    }
    case "Status": {
      const leader = u.leader === null ? null : fastBallot(u.leader)
      if (leader === undefined || !isInstance(u.chosenUpTo) || !isInt(u.maxChosen)) return undefined
      if ((u.flags !== undefined && !isInt(u.flags)) || (u.needed !== undefined && !isInstance(u.needed))) return undefined
      return {
        _tag: "Status",
        chosenUpTo: u.chosenUpTo,
        maxChosen: u.maxChosen,
        leader,
        ...(u.flags !== undefined ? { flags: u.flags as number } : {}),
        ...(u.needed !== undefined ? { needed: u.needed as number } : {})
      }
    }
    case "ClientPropose":
      return isInt(u.id) && u.value instanceof Uint8Array ? { _tag: "ClientPropose", id: u.id, value: u.value } : undefined
    case "ClientChosen":
      return isInt(u.id) && isInt(u.instance) && isInt(u.index)
        ? { _tag: "ClientChosen", id: u.id, instance: u.instance, index: u.index }
        : undefined
    default:
      return undefined
  }
}

/** These are plain data (ints, byte arrays, plain structs): the schema's encoding is the identity. */
const fastEncode = (m: NodeMessage): unknown => {
  switch (m._tag) {
    case "Accept":
    case "Accepted":
    case "Commit":
    case "Status":
    case "ClientPropose":
    case "ClientChosen":
      return m
    default:
      return undefined
  }
}

/** For transports carrying NodeMessage (node and client side). */
export const nodeMessageFastPath: Transport.FastPath<NodeMessage> = { decode: fastDecode, encode: fastEncode }

export interface Member {
  readonly nodeId: number
  readonly host: string
  readonly port: number
}

export interface PaxosLogOptions {
  readonly clusterId: string
  readonly nodeId: number
  readonly members: ReadonlyArray<Member>
  /** Where to listen; defaults to this node's member address. */
  readonly listen?: { readonly host: string; readonly port: number }
  readonly tuning?: Partial<Omit<PaxosConfig, "nodeId" | "members">>
  readonly tickMs?: number
  readonly proposeTimeoutMs?: number
  /** The largest value `propose` takes; default 16 MiB (well inside a 64 MiB frame with a batch and a catch-up reply). */
  readonly maxValueBytes?: number
  /**
   * May this node start with no Paxos state (the first start of a new cluster)? Default
   * true here; a node built from its config allows it only with `bootstrap`. Otherwise a
   * blank state fails the layer with PaxosStateMissing.
   */
  readonly founding?: boolean
  /**
   * This node joins a running cluster: it may start with no Paxos state, and until the log
   * names it (it learns the member sets from the log or an install) it has no member set
   * of its own: it neither votes nor runs, and it links to every address it knows.
   * A node the log already names a voter when it first learns of itself lost its state:
   * it stops (PaxosStateMissing).
   */
  readonly joining?: boolean
  /** Take proposals from dialers with role "client" (PaxosClient); default false. Never with a database: a client could inject binlog entries. */
  readonly acceptClients?: boolean
  /** Mutual TLS with the cluster's CA on the peer port and links (Transport). */
  readonly tls?: PeerTls | undefined
  /** Log compaction; default: a tail of 1 GiB and 1 day, checked every 5 s. */
  readonly retention?: Partial<Retention>
  /** Which chosen values change the member set (core.ts, PaxosConfig.membershipOf); none: the members never change. */
  readonly membershipOf?: (value: Uint8Array) => MemberSet | undefined
}

/**
 * What the log keeps: everything a live member still reads (its `needed`, or its chosen
 * prefix), and a tail of at most `bytes` and `ms` behind the newest entries for members
 * that come back; the rest is deleted every `everyMs`. A member is live while its
 * heartbeats arrive (within `memberTimeoutMs`).
 */
export interface Retention {
  readonly bytes: number
  readonly ms: number
  readonly everyMs: number
  readonly memberTimeoutMs: number
}

export const defaultRetention: Retention = { bytes: 1024 * 1024 * 1024, ms: 86_400_000, everyMs: 5_000, memberTimeoutMs: 10_000 }

export interface Position {
  readonly instance: number
  readonly index: number
}

export interface PaxosLogStatus {
  readonly nodeId: number
  readonly role: "follower" | "preparing" | "leader"
  readonly chosenUpTo: number
  readonly pending: number
  readonly reachable: ReadonlyArray<number>
  /** Durable writes: from issued to synced. */
  readonly writeMs: HistogramSummary
  /** Where the stored log starts (compaction), and the bytes its files take. */
  readonly compactedBelow: number
  readonly logBytes: number
  /**
   * Every peer ahead has compacted past this node's chosen prefix: it cannot catch up by
   * the log and needs an install of a peer's state from there (else null).
   */
  readonly needsInstall: number | null
  /** As leader: from an instance's first Accept to its value chosen. */
  readonly roundMs: HistogramSummary
  /** Running totals (the core's, and proposals here that timed out). */
  readonly counters: Readonly<PaxosCounters> & { readonly proposeTimeouts: number }
  /** The histograms behind writeMs and roundMs, for metrics (read, never change them). */
  readonly histograms: { readonly writeMs: Histogram; readonly roundMs: Histogram }
}

export interface PaxosLogShape {
  /**
   * Completes once the value is chosen, with where it sits in the log. `urgent` (small
   * control values: lease renewals) goes ahead of queued values (core.ts, Propose).
   */
  readonly propose: (value: Uint8Array, options?: { readonly urgent?: boolean }) => Effect.Effect<Position, ProposeError>
  /** Chosen instances in order from `from` on: history from storage, then live. */
  readonly chosen: (from: number) => Stream.Stream<ChosenEntry, StorageError>
  /** The chosen value of one instance (waits until it is chosen here). */
  readonly valueAt: (instance: number) => Effect.Effect<PaxosValue, StorageError | LogCompacted>
  /**
   * Calls `listener` with every chosen instance from `from` on, in order: first history,
   * then each new one synchronously as the log learns it (no queue, no fiber hop), until
   * the scope closes. The listener must not block or throw.
   */
  readonly follow: (from: number, listener: (entry: ChosenEntry) => void) => Effect.Effect<void, StorageError, Scope.Scope>
  readonly status: Effect.Effect<PaxosLogStatus>
  /** Take Paxos leadership (the lease holder's proposals then go out without forwarding). */
  readonly lead: Effect.Effect<void>
  /** The address the peer/client listener is bound to. */
  readonly address: { readonly host: string; readonly port: number }
  /**
   * What this node advertises to its peers on every Paxos heartbeat (Status, every
   * statusIntervalMs): a few bits of the node's own state for peers to route by, with no
   * extra connection or request. `flags` is asked at each heartbeat (it must be cheap and
   * must not throw).
   */
  readonly advertise: (flags: () => number) => Effect.Effect<void>
  /** Each peer's advertised flags, from its latest heartbeat no older than `maxAgeMs`. */
  readonly advertised: (maxAgeMs: number) => Effect.Effect<ReadonlyMap<number, number>>
  /**
   * The oldest instance the layer above still reads (asked at each heartbeat and each
   * compaction; cheap, must not throw): neither this node nor its peers compact past it
   * while this node is live. Without it, this node's chosen prefix counts.
   */
  readonly retain: (needed: () => number) => Effect.Effect<void>
  /**
   * Skips the chosen prefix to `upTo` (Input "Install" of core.ts): for a node that
   * needsInstall, once the layer above has installed a peer's state at `upTo`. Completes
   * once that is durable.
   */
  readonly install: (upTo: number, configs?: ReadonlyArray<ConfigEntry>) => Effect.Effect<void, StorageError>
  /** PaxosLogStatus.needsInstall, alone (cheap). */
  readonly needsInstall: Effect.Effect<number | null>
  /** Peer addresses of members (from the log's membership): new peers are dialled, and accepted. */
  readonly setAddresses: (members: ReadonlyArray<Member>) => Effect.Effect<void>
  /** The member sets from the chosen prefix on (the first governs it). */
  readonly memberSets: Effect.Effect<ReadonlyArray<ConfigEntry>>
  /** Stops asking peers for what this node lacks while the scope is open (a copy to install is on its way). */
  readonly pauseCatchup: Effect.Effect<void, never, Scope.Scope>
}

/** The instance asked for is below where the stored log starts (compacted). */
export class LogCompacted extends Data.TaggedError("LogCompacted")<{
  /** What was asked for: a log instance, or a transaction's GTID seq. */
  readonly instance?: number
  readonly seq?: number
  /** Where the log now starts. */
  readonly compactedBelow: number
}> {
  override get message() {
    const what = this.seq !== undefined ? `transaction seq ${this.seq}` : `instance ${this.instance}`
    return `${what} is no longer in the log (compacted: it starts at instance ${this.compactedBelow})`
  }
}

export const DEFAULT_MAX_VALUE_BYTES = 16 * 1024 * 1024

export class PaxosLog extends Context.Service<PaxosLog, PaxosLogShape>()("phxmaria/PaxosLog") {}

interface Pending {
  readonly deadline: number
  readonly complete: (result: Position | ProposeError) => void
}

/**
 * The driver works in callbacks, not fibers: a peer message, a proposal or a tick steps
 * the core at once, in the socket callback or the caller's call, and its outputs are
 * carried out there (core.ts says how). Records are written as soon as a step makes them;
 * LMDB commits everything written in one turn of the event loop together (group commit)
 * and settles writes in order, so what waits for durability is chained on the last write.
 * No timer is on this path: the tick only drives retries, timeouts and heartbeats.
 */
export const make = Effect.fnUntraced(function*(options: PaxosLogOptions) {
  // Effects started from callbacks run with this layer's context: its logger above all.
  const context = yield* Effect.context<never>()
  const storage = yield* PaxosStorage
  const monotonicMs = yield* Time.monotonicMs
  const memberIds = options.members.map((m) => m.nodeId)
  const self = options.members.find((m) => m.nodeId === options.nodeId)
  const config: PaxosConfig = {
    ...defaultPaxosConfig(options.nodeId, memberIds, yield* Time.randomId),
    ...options.tuning,
    ...(options.membershipOf !== undefined ? { membershipOf: options.membershipOf } : {})
  }
  /** Where each node's peer port is: the config's members, then every member set's (setAddresses). */
  const addressBook = new Map<number, Member>(options.members.map((m) => [m.nodeId, m]))
  const tickMs = options.tickMs ?? 25
  const proposeTimeoutMs = options.proposeTimeoutMs ?? 10_000
  const maxValueBytes = options.maxValueBytes ?? DEFAULT_MAX_VALUE_BYTES
  const network = yield* Transport.PeerNetwork
  const durable = yield* storage.load(config.memoryWindow, config.memoryWindowBytes)
  const blank = isBlank(durable)
  const joining = options.joining === true && blank
  if (options.founding === false && blank && !joining) return yield* new PaxosStateMissing({ nodeId: options.nodeId })
  // A joiner knows no member set: the founding one is not its to know.
  const core = new PaxosNode(joining ? { ...config, members: [] } : config, durable, yield* Time.randomId)
  /** Still to learn whether the log names this node (a joiner): until then it links to every address known. */
  let awaitingSelf = joining
  const namesSelf = () => core.memberSets.some((c) => c.voters.includes(options.nodeId) || c.learners.includes(options.nodeId))

  const pending = new Map<number, Pending>()
  let nextRequestId = 1
  let chosenUpTo = durable.chosenUpTo
  /** Followers called synchronously with each chosen instance (see `follow`). */
  const followers = new Set<(entry: ChosenEntry) => void>()
  /** Settles once every write issued so far is synced (LMDB settles writes in order). */
  let lastWrite: Promise<void> = Promise.resolve()
  const writeMs = new Histogram()
  const roundMs = new Histogram()
  let proposeTimeouts = 0
  /** When this node (as leader) first sent an Accept for an instance, until it is chosen. */
  const acceptSentAt = new Map<number, number>()
  /** Set once a write failed: the node stops taking part (it could vouch for nothing). */
  let failure: StorageError | undefined
  /**
   * Bytes of values handed to storage and not yet written. Over CATCHUP_WRITE_BACKLOG_BYTES,
   * catch-up waits (core input WriteBacklog): a node far behind learned 4 MiB slices faster
   * than it wrote them, queued hundreds of MB, and its binlog server's reads of those
   * instances waited 5-16 s for their writes while its MariaDB sat idle (bench:catchup).
   */
  let unwrittenBytes = 0
  let writeBacklog = false
  const noteUnwritten = (delta: number) => {
    unwrittenBytes += delta
    const over = unwrittenBytes > CATCHUP_WRITE_BACKLOG_BYTES
    if (over !== writeBacklog) {
      writeBacklog = over
      step({ _tag: "WriteBacklog", over })
    }
  }
  let transport: Transport.Transport<NodeMessage> | undefined

  // ---- stepping the core ---------------------------------------------------

  /** Inputs that arrived while a step was being carried out (a completion proposing again). */
  const inbox: Array<Input> = []
  let stepping = false

  const step = (input: Input): void => {
    inbox.push(input)
    if (stepping) return
    stepping = true
    try {
      while (inbox.length > 0 && failure === undefined) carryOut(core.step(inbox.shift()!, monotonicMs()))
    } finally {
      stepping = false
      inbox.length = 0
    }
    if (core.peerIds !== linkedPeers || awaitingSelf) syncPeers()
  }

  /** The peers the transport links to: the core's (every member set from the prefix on), by the address book. */
  let linkedPeers: ReadonlyArray<number> = core.peerIds
  let linkedKey = ""
  const syncPeers = () => {
    linkedPeers = core.peerIds
    if (awaitingSelf && namesSelf()) {
      awaitingSelf = false
      // Named a voter at once: it voted before and lost its state (a blank promise is unsafe).
      if (core.isVoter && core.configAt(core.chosenUpTo).voters.includes(options.nodeId)) {
        failure = new StorageError({ operation: "join", cause: new PaxosStateMissing({ nodeId: options.nodeId }).message })
        Effect.runForkWith(context)(Effect.logError(`node ${options.nodeId} joined with no Paxos state, but the log names it a voter: it stops`))
      }
    }
    const ids = awaitingSelf ? [...new Set([...linkedPeers, ...addressBook.keys()])].filter((id) => id !== options.nodeId) : linkedPeers
    const addresses = ids.flatMap((id) => {
      const a = addressBook.get(id)
      return a === undefined ? [] : [a]
    })
    const key = addresses.map((a) => `${a.nodeId}@${a.host}:${a.port}`).join(",")
    if (key === linkedKey) return
    linkedKey = key
    if (transport !== undefined) Effect.runForkWith(context)(transport.setPeers(addresses))
  }

  /** What this node advertises on its heartbeats, and the peers' latest: flags and when heard. */
  let advertisedFlags = (): number => 0
  const peerFlags = new Map<number, { readonly flags: number; readonly at: number }>()
  /** The oldest instance the layer above reads (PaxosLog.retain), and what each peer said of its own. */
  let neededHere: (() => number) | undefined
  const peerNeeds = new Map<number, { readonly needed: number; readonly at: number }>()

  const sendNow = (to: number, message: PaxosMessage) => {
    if (to === options.nodeId) step({ _tag: "Receive", from: to, message })
    else if (transport !== undefined) {
      Effect.runSyncWith(context)(transport.send(
        to,
        message._tag === "Status" ? { ...message, flags: advertisedFlags(), needed: Math.min(neededHere?.() ?? message.chosenUpTo, message.chosenUpTo) } : message
      ))
    }
  }

  /** Carries out one step's outputs in the order core.ts requires. */
  const carryOut = (o: Outputs): void => {
    // First the write, so nothing a callback below starts can be written before it.
    const now = monotonicMs()
    if (o.persist.length > 0) {
      const write = storage.write(o.persist, core.chosenUpTo)
      lastWrite = write
      write.then(() => writeMs.record(monotonicMs() - now), onStorageFailure)
      const bytes = o.persist.reduce((n, r) => n + (r._tag === "Accepted" || r._tag === "Chosen" ? valueBytes(r.value) : 0), 0)
      if (bytes > 0) {
        noteUnwritten(bytes)
        void write.finally(() => noteUnwritten(-bytes)).catch(() => undefined)
      }
    }
    let later: Array<{ readonly to: number; readonly message: PaxosMessage }> | undefined
    for (const s of o.send) {
      if (s.message._tag === "Accept" && !acceptSentAt.has(s.message.instance)) acceptSentAt.set(s.message.instance, now)
      if (sendsBeforePersist(s.message)) sendNow(s.to, s.message)
      else (later ??= []).push(s)
    }
    // Chosen is chosen: a majority holds it durably, whether or not this node's own record
    // of it is synced yet (a crash loses at most the record; the value is learned again).
    if (o.chosen.length > 0) {
      chosenUpTo = o.chosen[o.chosen.length - 1]!.instance + 1
      for (const e of o.chosen) {
        const sent = acceptSentAt.get(e.instance)
        if (sent !== undefined) {
          roundMs.record(now - sent)
          acceptSentAt.delete(e.instance)
        }
        for (const f of followers) f(e)
      }
      // Instances this node sent but another leader settled are not kept.
      if (acceptSentAt.size > 4096) acceptSentAt.clear()
    }
    for (const r of o.results) complete(r)
    if (later !== undefined) {
      const sends = later
      lastWrite.then(() => afterDurable(sends), () => undefined)
    }
    // Catch-up answers tell chosen values: they need not wait for this node's own writes
    // (storage waits only for writes of the instances it reads).
    if (o.readChosen.length > 0) answerFromStorage(o.readChosen)
  }

  const afterDurable = (sends: ReadonlyArray<{ readonly to: number; readonly message: PaxosMessage }>): void => {
    if (failure !== undefined) return
    for (const s of sends) sendNow(s.to, s.message)
  }

  const answerFromStorage = (reads: Outputs["readChosen"]): void => {
    if (failure !== undefined) return
    for (const r of reads) {
      Effect.runForkWith(context)(storage.readChosen(r.from, r.count, r.maxBytes).pipe(
        Effect.flatMap((entries) => transport === undefined ? Effect.void : transport.send(r.to, { _tag: "CatchupReply", entries })),
        Effect.catch((e) => Effect.logWarning(`paxos: cannot read chosen instances for node ${r.to}`, e))
      ))
    }
  }

  const onStorageFailure = (e: unknown): void => {
    if (failure !== undefined) return
    failure = e instanceof StorageError ? e : new StorageError({ operation: "persist", cause: e })
    Effect.runForkWith(context)(Effect.logError("paxos: a durable write failed; this node stops taking part in the log", failure))
    const reason = new ProposeTimeout({ timeoutMs: 0 })
    for (const p of pending.values()) p.complete(reason)
    pending.clear()
  }

  // ---- proposals -------------------------------------------------------------

  const register = (complete: Pending["complete"], value: Uint8Array, urgent = false): number => {
    const requestId = nextRequestId++
    pending.set(requestId, { deadline: monotonicMs() + proposeTimeoutMs, complete })
    step({ _tag: "Propose", requestId, value, urgent })
    return requestId
  }

  const complete = (r: ProposalResult) => {
    const p = pending.get(r.requestId)
    if (p === undefined) return
    pending.delete(r.requestId)
    p.complete(r._tag === "Chosen" ? { instance: r.instance, index: r.index } : new Superseded({ instance: r.instance }))
  }

  const reachableCount = (): number => {
    if (transport === undefined) return 1
    return [...Effect.runSyncWith(context)(transport.reachable).values()].filter(Boolean).length + 1
  }

  /** Requests past their deadline fail; `pending` is in request order, so stop at the first live one. */
  const expire = (now: number): void => {
    let expired: Array<[number, Pending]> | undefined
    for (const entry of pending) {
      if (entry[1].deadline > now) break
      ;(expired ??= []).push(entry)
    }
    if (expired === undefined) return
    const reachable = reachableCount()
    for (const [requestId, p] of expired) {
      pending.delete(requestId)
      step({ _tag: "Cancel", requestId })
      p.complete(
        reachable < core.quorum
          ? new NotEnoughNodes({ reachable, quorum: core.quorum })
          : (proposeTimeouts++, new ProposeTimeout({ timeoutMs: proposeTimeoutMs }))
      )
    }
  }

  // ---- the network -------------------------------------------------------------

  /** Peer messages and client requests step the core right in the socket callback. */
  const onInbound = (item: Transport.Inbound<NodeMessage>): void => {
    const m = item.message
    if (item._tag === "Peer") {
      if (m._tag.startsWith("Client")) return // a peer never sends client messages
      if (m._tag === "Status") {
        if (m.flags !== undefined) peerFlags.set(item.from, { flags: m.flags, at: monotonicMs() })
        peerNeeds.set(item.from, { needed: Math.min(m.needed ?? m.chosenUpTo, m.chosenUpTo), at: monotonicMs() })
      }
      step({ _tag: "Receive", from: item.from, message: m as PaxosMessage })
      return
    }
    const clientId = item.clientId
    const reply = (message: ClientMessage) => {
      if (transport !== undefined) Effect.runSyncWith(context)(transport.replyToClient(clientId, message))
    }
    switch (m._tag) {
      case "ClientPropose": {
        const id = m.id
        register((result) =>
          reply(!("_tag" in result)
            ? { _tag: "ClientChosen", id, instance: result.instance, index: result.index }
            : { _tag: "ClientFailed", id, error: result }), m.value)
        return
      }
      case "ClientStatus":
        reply({ _tag: "ClientStatusReply", id: m.id, role: core.currentRole, chosenUpTo: core.chosenUpTo })
        return
      default:
        Effect.runForkWith(context)(Effect.logWarning(`client ${clientId} sent ${m._tag}, which only a node sends`))
    }
  }

  transport = yield* network.open<NodeMessage>({
    clusterId: options.clusterId,
    nodeId: options.nodeId,
    listen: options.listen ?? { host: self?.host ?? "127.0.0.1", port: self?.port ?? 0 },
    peers: (joining ? [...addressBook.keys()].filter((id) => id !== options.nodeId) : core.peerIds).flatMap((id) => {
      const a = addressBook.get(id)
      return a === undefined ? [] : [a]
    }),
    messageSchema: NodeMessage as Schema.Codec<NodeMessage, unknown>,
    acceptClients: options.acceptClients ?? false,
    tls: options.tls,
    acceptUnknownPeers: () => awaitingSelf,
    fastPath: nodeMessageFastPath,
    onInbound
  })

  // Retries, timeouts and heartbeats only: every tickMs while something waits on a timer,
  // at the heartbeat interval while the log is quiet (an idle node stays idle).
  const quietTickMs = Math.max(tickMs, config.statusIntervalMs)
  yield* Effect.suspend(() => Effect.sleep(core.quiet && pending.size === 0 ? quietTickMs : tickMs)).pipe(
    Effect.andThen(Effect.sync(() => {
      step({ _tag: "Tick" })
      expire(monotonicMs())
    })),
    Effect.forever,
    forkScopedLogged("paxos: the tick loop")
  )

  // ---- compaction -------------------------------------------------------------

  const retention: Retention = { ...defaultRetention, ...options.retention }
  /** The lowest instance this node or a live peer still reads: nothing from there on goes. */
  const retainFrom = (): number => {
    const now = monotonicMs()
    let below = Math.min(core.chosenUpTo, neededHere?.() ?? core.chosenUpTo)
    for (const [, p] of peerNeeds) if (now - p.at <= retention.memberTimeoutMs && p.needed < below) below = p.needed
    return below
  }
  const compactOnce = Effect.gen(function*() {
    if (failure !== undefined) return
    const start = yield* storage.compact({ below: retainFrom(), retainBytes: retention.bytes, retainMs: retention.ms })
    if (start > core.compactedBelow) {
      step({ _tag: "Compact", below: start })
      yield* Effect.logInfo(`paxos: the log now starts at instance ${start} (compacted)`)
    }
  })
  yield* compactOnce.pipe(
    Effect.catch((e) => Effect.logWarning("paxos: log compaction failed (tried again later)", e)),
    Effect.repeat(Schedule.spaced(retention.everyMs)),
    forkScopedLogged("paxos: log compaction")
  )

  const propose = (value: Uint8Array, proposeOptions?: { readonly urgent?: boolean }): Effect.Effect<Position, ProposeError> =>
    Effect.callback<Position, ProposeError>((resume) => {
      if (failure !== undefined) return resume(Effect.fail(new ProposeTimeout({ timeoutMs: 0 })))
      if (value.byteLength > maxValueBytes) return resume(Effect.fail(new ValueTooLarge({ bytes: value.byteLength, maxBytes: maxValueBytes })))
      const requestId = register((r) => resume("_tag" in r ? Effect.fail(r) : Effect.succeed(r)), value, proposeOptions?.urgent === true)
      // Interrupted caller: forget the request and take it out of the queue if not yet placed.
      return Effect.sync(() => {
        if (pending.delete(requestId)) step({ _tag: "Cancel", requestId })
      })
    })

  const chosen = (from: number): Stream.Stream<ChosenEntry, StorageError> =>
    Stream.callback<ChosenEntry, StorageError>((out) =>
      Effect.andThen(follow(from, (e) => void Queue.offerUnsafe(out, e)), Effect.never)
    )

  /** Below chosenUpTo every instance is in memory or in storage: a gap is a broken invariant (a defect). */
  const missing = (instance: number) => Effect.die(new Error(`chosen log has no instance ${instance} below ${chosenUpTo}`))

  const follow = (from: number, listener: (entry: ChosenEntry) => void): Effect.Effect<void, StorageError, Scope.Scope> =>
    Effect.gen(function*() {
      let next = from
      // Live entries come from this node's chosenUpTo on: one asked for from further ahead
      // (valueAt of a future instance) must not see the ones before it.
      const live = (entry: ChosenEntry) => {
        if (entry.instance >= from) listener(entry)
      }
      for (;;) {
        // Caught up: joining the live followers in the same synchronous step as the last
        // check, so no instance learned in between is missed.
        const joined = yield* Effect.sync(() => {
          if (next < chosenUpTo) return false
          followers.add(live)
          return true
        })
        if (joined) break
        // Compacted away (or skipped by an install): the listener sees the jump, and a
        // follower that needs every instance must tell (ClusterState does).
        if (next < core.compactedBelow) next = core.compactedBelow
        if (next >= chosenUpTo) continue
        const inMemory = core.chosenValue(next)
        if (inMemory !== undefined) {
          listener({ instance: next++, value: inMemory })
          continue
        }
        // Storage waits for writes of these instances still in flight.
        const page = yield* storage.readChosen(next, Math.min(64, chosenUpTo - next))
        if (page[0]?.instance !== next) return yield* missing(next)
        for (const e of page) {
          if (e.instance !== next) break
          listener(e)
          next++
        }
      }
      yield* Effect.addFinalizer(() => Effect.sync(() => followers.delete(live)))
    })

  const valueAt = (instance: number): Effect.Effect<PaxosValue, StorageError | LogCompacted> =>
    Effect.gen(function*() {
      if (instance >= chosenUpTo) {
        const e = yield* Stream.runHead(chosen(instance))
        if (e._tag === "Some") return e.value.value
      }
      if (instance < core.compactedBelow) return yield* new LogCompacted({ instance, compactedBelow: core.compactedBelow })
      const inMemory = core.chosenValue(instance)
      if (inMemory !== undefined) return inMemory
      const [e] = yield* storage.readChosen(instance, 1)
      if (e?.instance !== instance) {
        if (instance < core.compactedBelow) return yield* new LogCompacted({ instance, compactedBelow: core.compactedBelow })
        return yield* missing(instance)
      }
      return e.value
    })

  const status = Effect.gen(function*() {
    const reachable = transport === undefined ? new Map<number, boolean>() : yield* transport.reachable
    const usage = yield* storage.usage
    return {
      nodeId: options.nodeId,
      role: core.currentRole,
      chosenUpTo: core.chosenUpTo,
      pending: pending.size,
      reachable: [...reachable].filter(([, ok]) => ok).map(([id]) => id),
      writeMs: writeMs.summary(),
      roundMs: roundMs.summary(),
      counters: { ...core.counters, proposeTimeouts },
      histograms: { writeMs, roundMs },
      compactedBelow: core.compactedBelow,
      logBytes: usage.bytes,
      needsInstall: core.needsInstall
    } satisfies PaxosLogStatus
  })

  const lead = Effect.sync(() => step({ _tag: "Lead" }))

  const advertise = (flags: () => number) => Effect.sync(() => {
    advertisedFlags = flags
  })
  const advertised = (maxAgeMs: number) =>
    Effect.sync(() => {
      const now = monotonicMs()
      const out = new Map<number, number>()
      for (const [id, p] of peerFlags) if (now - p.at <= maxAgeMs) out.set(id, p.flags)
      return out
    })

  const retain = (needed: () => number) => Effect.sync(() => {
    neededHere = needed
  })
  const install = (upTo: number, configs: ReadonlyArray<ConfigEntry> = []) =>
    Effect.suspend(() => {
      step({ _tag: "Install", upTo, configs })
      const written = lastWrite
      return Effect.tryPromise({ try: () => written, catch: (cause) => cause instanceof StorageError ? cause : new StorageError({ operation: "install", cause }) })
    })

  const setAddresses = (members: ReadonlyArray<Member>) =>
    Effect.sync(() => {
      let changed = false
      for (const m of members) {
        const known = addressBook.get(m.nodeId)
        if (known?.host === m.host && known.port === m.port) continue
        addressBook.set(m.nodeId, { nodeId: m.nodeId, host: m.host, port: m.port })
        changed = true
      }
      if (changed) syncPeers()
    })

  return PaxosLog.of({
    propose,
    chosen,
    valueAt,
    follow,
    status,
    lead,
    address: transport.address,
    advertise,
    advertised,
    retain,
    install,
    needsInstall: Effect.sync(() => core.needsInstall),
    setAddresses,
    memberSets: Effect.sync(() => core.memberSets),
    pauseCatchup: Effect.acquireRelease(
      Effect.sync(() => step({ _tag: "PauseCatchup", paused: true })),
      () => Effect.sync(() => step({ _tag: "PauseCatchup", paused: false }))
    )
  })
})

/**
 * The node has no Paxos state and was not started to found a new cluster: it may have
 * voted before and lost its storage, and must not vote again with a blank promise (it could
 * help choose a second value for an instance it had accepted).
 */
export class PaxosStateMissing extends Data.TaggedError("PaxosStateMissing")<{ readonly nodeId: number }> {
  override get message() {
    return `node ${this.nodeId} has no Paxos state and was not started with --bootstrap (config "bootstrap": true). ` +
      "For the first start of a new cluster, start every node once with --bootstrap. " +
      "If this node's data was lost (a wiped or replaced disk), it must not vote with a blank promise: " +
      "restore its dataDir, or remove it (member remove --id N) and add the machine back under a new nodeId (member add: not yet supported)."
  }
}

export const layer = (
  options: PaxosLogOptions
): Layer.Layer<PaxosLog, StorageError | Transport.TransportListenError | PaxosStateMissing, PaxosStorage | Transport.PeerNetwork> =>
  Layer.effect(PaxosLog, make(options))
