/**
 * The replicated log of one node: drives the pure Paxos core with real time, LMDB and TCP.
 *
 * One fiber owns the core. It takes every input that is waiting (peer messages, proposals,
 * ticks), steps the core through all of them, makes the resulting records durable in one
 * synced LMDB commit, and only then sends messages and completes proposals. Inputs that
 * arrive during the commit form the next group: group commit falls out of the loop.
 */
import { Context, Effect, Fiber, Layer, PubSub, Queue, Ref, Schedule, Schema, Stream } from "effect"
import {
  defaultPaxosConfig,
  type Input,
  type Outputs,
  type PaxosConfig,
  PaxosNode,
  type PersistRecord,
  type ProposalResult,
  sendsBeforePersist
} from "../domain/paxos/core.js"
import { type ChosenEntry, PaxosMessage } from "../domain/paxos/messages.js"
import { NotEnoughNodes, ProposeError, ProposeTimeout, Superseded } from "../domain/errors.js"
import { PaxosStorage } from "./PaxosStorage.js"
import * as Transport from "./Transport.js"

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
  readonly acceptClients?: boolean
}

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
}

export interface PaxosLogShape {
  /** Completes once the value is chosen, with where it sits in the log. */
  readonly propose: (value: Uint8Array) => Effect.Effect<Position, ProposeError>
  /** Chosen instances in order from `from` on: history from storage, then live. */
  readonly chosen: (from: number) => Stream.Stream<ChosenEntry>
  readonly status: Effect.Effect<PaxosLogStatus>
  /** Take Paxos leadership (the lease holder's proposals then go out without forwarding). */
  readonly lead: Effect.Effect<void>
  /** The address the peer/client listener is bound to. */
  readonly address: { readonly host: string; readonly port: number }
}

export class PaxosLog extends Context.Service<PaxosLog, PaxosLogShape>()("phxmaria/PaxosLog") {}

/** A client request other than a proposal, answered by the driver. */
interface ClientInput {
  readonly _tag: "Client"
  readonly clientId: number
  readonly message: ClientMessage
}

interface Pending {
  readonly deadline: number
  readonly complete: (result: Position | ProposeError) => void
}

const monotonicMs = () => performance.now()

export const make = Effect.fnUntraced(function*(options: PaxosLogOptions) {
  const storage = yield* PaxosStorage
  const memberIds = options.members.map((m) => m.nodeId)
  const self = options.members.find((m) => m.nodeId === options.nodeId)
  const config: PaxosConfig = {
    ...defaultPaxosConfig(options.nodeId, memberIds, Math.floor(Math.random() * 2 ** 31)),
    ...options.tuning
  }
  const tickMs = options.tickMs ?? 5
  const proposeTimeoutMs = options.proposeTimeoutMs ?? 10_000
  const durable = yield* storage.load(config.memoryWindow).pipe(Effect.orDie)
  const core = new PaxosNode(config, durable, Math.floor(Math.random() * 2 ** 31))

  /** The driver's inputs: the core's, plus client requests that need the driver's fiber. */
  const inputs = yield* Queue.unbounded<Input | ClientInput>()
  const pending = new Map<number, Pending>()
  let nextRequestId = 1
  const chosenHub = yield* PubSub.unbounded<ChosenEntry>()
  const chosenUpTo = yield* Ref.make(durable.chosenUpTo)

  const register = (complete: Pending["complete"], value: Uint8Array): number => {
    const requestId = nextRequestId++
    pending.set(requestId, { deadline: monotonicMs() + proposeTimeoutMs, complete })
    Queue.offerUnsafe(inputs, { _tag: "Propose", requestId, value })
    return requestId
  }

  /** Answers for client connections, collected while the driver completes requests. */
  let clientReplies: Array<{ readonly clientId: number; readonly reply: ClientMessage }> = []

  /**
   * Peer messages feed the core and client proposals are registered right in the socket
   * callback (no queue and fiber hop of their own); other client requests go to the driver.
   */
  const onInbound = (item: Transport.Inbound<NodeMessage>): void => {
    const m = item.message
    if (item._tag === "Peer") {
      if (m._tag.startsWith("Client")) return // a peer never sends client messages
      Queue.offerUnsafe(inputs, { _tag: "Receive", from: item.from, message: m as PaxosMessage })
    } else if (m._tag === "ClientPropose") {
      const clientId = item.clientId
      const id = m.id
      register((result) => {
        clientReplies.push({
          clientId,
          reply: !("_tag" in result)
            ? { _tag: "ClientChosen", id, instance: result.instance, index: result.index }
            : { _tag: "ClientFailed", id, error: result }
        })
      }, m.value)
    } else {
      Queue.offerUnsafe(inputs, { _tag: "Client", clientId: item.clientId, message: m as ClientMessage })
    }
  }

  const transport = yield* Transport.make<NodeMessage>({
    clusterId: options.clusterId,
    nodeId: options.nodeId,
    listen: options.listen ?? { host: self?.host ?? "127.0.0.1", port: self?.port ?? 0 },
    peers: options.members.filter((m) => m.nodeId !== options.nodeId),
    messageSchema: NodeMessage as Schema.Codec<NodeMessage, unknown>,
    acceptClients: options.acceptClients ?? true,
    fastPath: nodeMessageFastPath,
    onInbound
  }).pipe(Effect.orDie)

  const reachableCount = Effect.map(transport.reachable, (m) => [...m.values()].filter(Boolean).length + 1)

  const sendClientReplies = Effect.suspend(() => {
    if (clientReplies.length === 0) return Effect.void
    const replies = clientReplies
    clientReplies = []
    return Effect.forEach(replies, (r) => transport.replyToClient(r.clientId, r.reply), { discard: true })
  })

  const complete = (r: ProposalResult) => {
    const p = pending.get(r.requestId)
    if (p === undefined) return
    pending.delete(r.requestId)
    p.complete(r._tag === "Chosen" ? { instance: r.instance, index: r.index } : new Superseded({ instance: r.instance }))
  }

  /** Requests past their deadline fail; `pending` is in request order, so stop at the first live one. */
  const expire = Effect.fnUntraced(function*(now: number) {
    let expired: Array<[number, Pending]> | undefined
    for (const entry of pending) {
      if (entry[1].deadline > now) break
      ;(expired ??= []).push(entry)
    }
    if (expired === undefined) return
    const reachable = yield* reachableCount
    for (const [requestId, p] of expired) {
      pending.delete(requestId)
      Queue.offerUnsafe(inputs, { _tag: "Cancel", requestId })
      p.complete(
        reachable < core.quorum
          ? new NotEnoughNodes({ reachable, quorum: core.quorum })
          : new ProposeTimeout({ timeoutMs: proposeTimeoutMs })
      )
    }
  })

  /**
   * The core's outputs, carried out as core.ts asks: what may leave early leaves now; the
   * rest waits for the step's write, which runs while the driver goes on with later inputs.
   * The completer takes writes in the order they were issued (LMDB commits in that order).
   */
  const completions = yield* Queue.unbounded<{ readonly durable: Fiber.Fiber<void>; readonly outs: Array<Outputs> }>()

  const afterDurable = Effect.fnUntraced(function*(outs: Array<Outputs>) {
    for (const o of outs) {
      for (const s of o.send) {
        if (sendsBeforePersist(s.message)) continue
        if (s.to === options.nodeId) Queue.offerUnsafe(inputs, { _tag: "Receive", from: s.to, message: s.message })
        else yield* transport.send(s.to, s.message)
      }
      for (const r of o.readChosen) {
        const entries = yield* storage.readChosen(r.from, r.count).pipe(Effect.orDie)
        yield* transport.send(r.to, { _tag: "CatchupReply", entries })
      }
      if (o.chosen.length > 0) {
        yield* Ref.set(chosenUpTo, o.chosen[o.chosen.length - 1]!.instance + 1)
        yield* PubSub.publishAll(chosenHub, o.chosen)
      }
    }
  })

  const completer = Effect.gen(function*() {
    for (;;) {
      const c = yield* Queue.take(completions)
      yield* Fiber.join(c.durable)
      yield* afterDurable(c.outs)
    }
  })

  const driver = Effect.gen(function*() {
    for (;;) {
      const batch = yield* Queue.takeAll(inputs)
      const now = monotonicMs()
      const records: Array<PersistRecord> = []
      const outs: Array<Outputs> = []
      let ticked = false
      for (const input of batch) {
        if (input._tag === "Client") {
          yield* onClientRequest(input)
          continue
        }
        if (input._tag === "Tick") {
          if (ticked) continue
          ticked = true
        }
        const o = core.step(input, now)
        for (const r of o.persist) records.push(r)
        outs.push(o)
        for (const s of o.send) if (sendsBeforePersist(s.message)) yield* transport.send(s.to, s.message)
        for (const r of o.results) complete(r)
      }
      yield* sendClientReplies
      // Started at once: the puts join this turn's LMDB commit instead of waiting a scheduler turn.
      const durable = yield* Effect.forkChild(storage.persist(records).pipe(Effect.orDie), { startImmediately: true })
      Queue.offerUnsafe(completions, { durable, outs })
      if (ticked) {
        yield* expire(now)
        yield* sendClientReplies
      }
    }
  })

  const onClientRequest = (input: ClientInput): Effect.Effect<void> => {
    const m = input.message
    return m._tag === "ClientStatus"
      ? transport.replyToClient(input.clientId, {
        _tag: "ClientStatusReply",
        id: m.id,
        role: core.currentRole,
        chosenUpTo: core.chosenUpTo
      })
      : Effect.logWarning(`client ${input.clientId} sent ${m._tag}, which only a node sends`)
  }

  yield* Effect.forkScoped(driver)
  yield* Effect.forkScoped(completer)
  yield* Effect.forkScoped(
    Effect.sync(() => Queue.offerUnsafe(inputs, { _tag: "Tick" })).pipe(Effect.repeat(Schedule.spaced(`${tickMs} millis`)))
  )

  const propose = (value: Uint8Array): Effect.Effect<Position, ProposeError> =>
    Effect.callback<Position, ProposeError>((resume) => {
      const requestId = register((r) => resume("_tag" in r ? Effect.fail(r) : Effect.succeed(r)), value)
      // Interrupted caller: forget the request and take it out of the queue if not yet placed.
      return Effect.sync(() => {
        if (pending.delete(requestId)) Queue.offerUnsafe(inputs, { _tag: "Cancel", requestId })
      })
    })

  const chosen = (from: number): Stream.Stream<ChosenEntry> =>
    Stream.callback<ChosenEntry>((out) =>
      Effect.gen(function*() {
        // Subscribe first, then read history: nothing published in between is missed.
        const sub = yield* PubSub.subscribe(chosenHub)
        let next = from
        for (;;) {
          const upTo = yield* Ref.get(chosenUpTo)
          if (next >= upTo) break
          const page = yield* storage.readChosen(next, Math.min(256, upTo - next)).pipe(Effect.orDie)
          if (page[0]?.instance !== next) return yield* Effect.die(new Error(`chosen log has no instance ${next} below ${upTo}`))
          for (const e of page) {
            if (e.instance !== next) break
            Queue.offerUnsafe(out, e)
            next++
          }
        }
        for (;;) {
          const e = yield* PubSub.take(sub)
          if (e.instance < next) continue
          Queue.offerUnsafe(out, e)
          next = e.instance + 1
        }
      })
    )

  const status = Effect.gen(function*() {
    const reachable = yield* transport.reachable
    return {
      nodeId: options.nodeId,
      role: core.currentRole,
      chosenUpTo: core.chosenUpTo,
      pending: pending.size,
      reachable: [...reachable].filter(([, ok]) => ok).map(([id]) => id)
    } satisfies PaxosLogStatus
  })

  const lead = Effect.sync(() => {
    Queue.offerUnsafe(inputs, { _tag: "Lead" })
  })

  return PaxosLog.of({ propose, chosen, status, lead, address: transport.address })
})

export const layer = (options: PaxosLogOptions): Layer.Layer<PaxosLog, never, PaxosStorage> =>
  Layer.effect(PaxosLog, make(options))
