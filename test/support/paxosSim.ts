/**
 * Deterministic simulation of the pure Paxos core: a seeded network that delays, drops,
 * duplicates, reorders and partitions messages, and nodes that crash (memory lost, durable
 * records kept) and restart. Every run is a function of its seed.
 */
import {
  applyRecords,
  compactImage,
  type DurableImage,
  durableStateOf,
  emptyDurableImage,
  type Outputs,
  CONFIG_WINDOW,
  type ConfigEntry,
  type MemberSet,
  type PaxosConfig,
  PaxosNode,
  sendsBeforePersist
} from "../../src/domain/paxos/core.js"
import { EventQueue, Rng } from "./sim.js"
import { type PaxosMessage, type PaxosValue, valueEquals } from "../../src/domain/paxos/messages.js"

export interface SimOptions {
  readonly seed: number
  readonly nodes: number
  readonly chaosMs: number
  readonly healBoundMs: number
  readonly proposals: number
  readonly dropRate: number
  readonly dupRate: number
  readonly maxDelayMs: number
  readonly crashRate: number // per node per tick
  readonly persistCrashRate: number // per step that writes records: crash with the write lost
  readonly diskDelayMs: number // writes become durable after up to this long, in order
  readonly diskCrashRate: number // per write completion: crash just before it, losing it and later ones
  readonly partitionRate: number // per tick
  readonly compactRate: number // per node per tick: drop the stored log below a random chosen instance
  /** Nodes beyond the founding ones, outside the member set until a change adds them. */
  readonly spareNodes: number
  /** Of the proposals, this share are membership changes (any new voters and learners from every node). */
  readonly membershipShare: number
}

export const defaultSimOptions = (seed: number, nodes: number): SimOptions => ({
  seed,
  nodes,
  chaosMs: 1_500,
  healBoundMs: 10_000,
  proposals: 40,
  dropRate: 0.1,
  dupRate: 0.05,
  maxDelayMs: 15,
  crashRate: 0.0015,
  persistCrashRate: 0.005,
  diskDelayMs: 4,
  diskCrashRate: 0.002,
  partitionRate: 0.004,
  compactRate: 0.01,
  spareNodes: 2,
  membershipShare: 0.15
})

export interface SimResult {
  readonly seed: number
  readonly failures: ReadonlyArray<string>
  readonly chosenInstances: number
  readonly confirmed: number
  readonly crashes: number
  /** Installs: nodes that found every peer's log compacted past them and skipped ahead. */
  readonly installs: number
  /** Membership changes chosen, and the member set in force at the end. */
  readonly membershipChanges: number
  readonly finalMembers: MemberSet
  /** Messages sent, by kind, plus "readChosen" for catch-ups served from storage. */
  readonly messages: Record<string, number>
}

const TICK_MS = 5

type Event =
  | { readonly kind: "deliver"; readonly to: number; readonly from: number; readonly message: PaxosMessage; readonly incarnation: number }
  | { readonly kind: "tick"; readonly node: number; readonly incarnation: number }
  | { readonly kind: "propose"; readonly node: number; readonly value?: string }
  | { readonly kind: "finalRetry" }
  | { readonly kind: "restart"; readonly node: number }
  /** The node's disk finished its writes up to `write`. */
  | { readonly kind: "flush"; readonly node: number; readonly incarnation: number; readonly write: number }

export type Durable = DurableImage
export { durableStateOf }

interface SimNode {
  readonly id: number
  core: PaxosNode | null
  incarnation: number
  readonly durable: Durable
  /** Next instance this incarnation must deliver (checks in-order delivery). */
  nextDelivery: number
  readonly requests: Map<number, string>
  /** Writes issued but not yet durable, in order, with what waits for them. */
  writes: Array<{ readonly index: number; readonly out: Outputs; readonly chosenUpTo: number }>
  writeIndex: number
  /** Told the core its writes are behind (WriteBacklog), as PaxosLog does over its byte bound. */
  backlogged: boolean
}

/** Writes pending at which a node's catch-up waits for its disk (PaxosLog counts bytes). */
const BACKLOG_WRITES = 2

/** A membership value of the simulation: "M:voters:learners" (comma-separated ids). */
export const membershipValue = (set: MemberSet, tag = ""): string => `M:${set.voters.join(",")}:${set.learners.join(",")}:${tag}`
const ids = (t: string | undefined) => (t === undefined || t === "" ? [] : t.split(",").map(Number))
export const simMembershipOf = (value: Uint8Array): MemberSet | undefined => {
  if (value.length < 2 || value[0] !== 77 || value[1] !== 58) return undefined // "M:"
  const [, voters, learners] = Buffer.from(value).toString("utf8").split(":")
  return { voters: ids(voters), learners: ids(learners) }
}

export const simPaxosConfig = (nodeId: number, members: ReadonlyArray<number>, seed: number): PaxosConfig => ({
  nodeId,
  members,
  membershipOf: simMembershipOf,
  batchMaxCount: 3,
  batchMaxBytes: 64,
  maxInflight: 3,
  prepareRetryMs: 60,
  acceptRetransmitMs: 40,
  statusIntervalMs: 30,
  leaderTimeoutMs: 150,
  backoffMinMs: 10,
  backoffMaxMs: 80,
  catchupBatch: 4,
  catchupMaxBytes: 40,
  catchupRetryMs: 40,
  catchupReplyTimeoutMs: 200,
  catchupPipeline: 2,
  installAfterMs: 100,
  memoryWindow: 8,
  memoryWindowBytes: 200,
  seed
})

/** The chosen value at `instance` in a durable image, for a node that knows it is chosen. */
export const storedValue = (d: Durable, instance: number): PaxosValue | undefined => d.log.get(instance)?.value

const text = (b: Uint8Array): string => Buffer.from(b).toString("utf8")

export const runSimulation = (options: SimOptions): SimResult => {
  const rng = new Rng(options.seed)
  const members = Array.from({ length: options.nodes }, (_, i) => i + 1)
  // Every node that exists: the founding members, then the spares.
  const everyone = Array.from({ length: options.nodes + options.spareNodes }, (_, i) => i + 1)
  /** The true member sets, from the chosen log (as every node must come to see them). */
  let trueConfigs: Array<ConfigEntry> = [{ from: 0, voters: members, learners: [] }]
  let membershipChanges = 0
  const trueConfigAt = (instance: number): ConfigEntry => {
    let c = trueConfigs[0]!
    for (const e of trueConfigs) if (e.from <= instance) c = e
    return c
  }
  /**
   * The nodes that must hold everything up to `last`: the members (voters and learners) of
   * the member set from the next instance on (a node removed before hears no more; one just
   * added must catch up).
   */
  const requiredAt = (last: number): ReadonlyArray<number> => {
    const next = trueConfigAt(last + 1)
    return [...next.voters, ...next.learners]
  }
  const failures: Array<string> = []
  const fail = (msg: string) => {
    if (failures.length < 10) failures.push(msg)
  }
  const queue = new EventQueue<Event>()
  let now = 0
  let crashes = 0
  let installs = 0
  let requestSeq = 0
  let proposalsMade = 0
  let chaos = true
  /** Partition: group id per node; messages cross only within a group. */
  let groups = new Map<number, number>(everyone.map((m) => [m, 0]))

  // The client of the last value retries (with a new value) when one attempt fails or hangs.
  const finalPrefix = `s${options.seed}-final`
  let finalAttempts = 0
  const finalConfirmed = () => [...confirmed.keys()].some((v) => v.startsWith(finalPrefix))
  const proposeFinal = () => {
    const value = `${finalPrefix}-${finalAttempts++}`
    const voters = trueConfigs[trueConfigs.length - 1]!.voters
    queue.push(now + 1, { kind: "propose", node: voters[rng.int(0, voters.length - 1)]!, value })
    queue.push(now + 1_500, { kind: "finalRetry" })
  }
  const globalChosen = new Map<number, PaxosValue>()
  const proposed = new Set<string>()
  const confirmed = new Map<string, { instance: number; index: number }>()

  const configOf = (id: number) => simPaxosConfig(id, members, options.seed)
  const nodes = new Map<number, SimNode>(
    everyone.map((id) => [
      id,
      {
        id,
        core: null,
        incarnation: 0,
        durable: emptyDurableImage(),
        nextDelivery: 0,
        requests: new Map(),
        writes: [],
        writeIndex: 0,
        backlogged: false
      }
    ])
  )

  const start = (n: SimNode) => {
    n.incarnation++
    const config = configOf(n.id)
    const durable = durableStateOf(n.durable, config.memoryWindow)
    n.core = new PaxosNode(config, durable, n.incarnation)
    n.nextDelivery = durable.chosenUpTo
    n.requests.clear()
    n.writes = [] // lost with the crash
    n.backlogged = false
    queue.push(now + rng.int(0, TICK_MS), { kind: "tick", node: n.id, incarnation: n.incarnation })
  }

  const crash = (n: SimNode) => {
    n.core = null
    crashes++
    queue.push(now + rng.int(20, 400), { kind: "restart", node: n.id })
  }

  const handle = (n: SimNode, out: Outputs) => {
    // 1. what may go before the records are durable: early messages and results
    for (const s of out.send) if (sendsBeforePersist(s.message)) send(n.id, s.to, s.message)
    if (out.installed !== undefined) n.nextDelivery = out.installed
    // Chosen values are delivered at once (a majority holds them), in order.
    for (const c of out.chosen) {
      if (c.instance !== n.nextDelivery) fail(`order: node ${n.id} delivered ${c.instance}, expected ${n.nextDelivery}`)
      n.nextDelivery = c.instance + 1
      const g = globalChosen.get(c.instance)
      if (g === undefined) {
        globalChosen.set(c.instance, c.value)
        let set: MemberSet | undefined
        for (const v of c.value.values) set = simMembershipOf(v) ?? set
        if (set !== undefined) {
          membershipChanges++
          trueConfigs = [...trueConfigs.filter((x) => x.from !== c.instance + CONFIG_WINDOW), { from: c.instance + CONFIG_WINDOW, ...set }]
            .sort((a, b) => a.from - b.from)
        }
      } else if (!valueEquals(g, c.value)) fail(`agreement: instance ${c.instance} chosen with two values (node ${n.id})`)
      for (const v of c.value.values) if (!proposed.has(text(v))) fail(`validity: instance ${c.instance} holds unproposed ${text(v)}`)
    }
    for (const r of out.results) {
      const v = n.requests.get(r.requestId)
      if (v === undefined) {
        fail(`result for unknown request ${r.requestId} at node ${n.id}`)
        continue
      }
      n.requests.delete(r.requestId)
      if (r._tag === "Chosen") {
        // Checked against the delivered log when this node (or another) delivers the
        // instance; a result may come before delivery (instances beyond a gap).
        const g = globalChosen.get(r.instance)
        const got = g?.values[r.index]
        if (g !== undefined && (got === undefined || text(got) !== v)) fail(`confirmed ${v} at ${r.instance}/${r.index} but the log holds ${got && text(got)}`)
        confirmed.set(v, { instance: r.instance, index: r.index })
      } else if (v.startsWith(finalPrefix) && !finalConfirmed()) {
        proposeFinal() // superseded: definitively not chosen, so the client tries again
      }
    }
    // A crash while the records are being written: they are lost, the early messages are out.
    if (chaos && out.persist.length > 0 && rng.next() < options.persistCrashRate) {
      crash(n)
      return
    }
    // 2. the write: durable later, in order; what depends on it waits. Catch-up answers go
    // at once, as the driver sends them, unless a write still pending holds an instance
    // they read (the driver's storage read waits for it: here, until this write is durable).
    if (out.readChosen.length > 0) {
      const pending = new Set<number>()
      for (const w of [...n.writes.map((x) => x.out), out]) {
        for (const r of w.persist) if (r._tag === "Accepted" || r._tag === "Chosen") pending.add(r.instance)
      }
      const readable = out.readChosen.filter((rc) => ![...pending].some((i) => i >= rc.from && i < rc.from + rc.count))
      if (readable.length > 0) {
        answerReads(n, readable)
        out = { ...out, readChosen: out.readChosen.filter((rc) => !readable.includes(rc)) }
      }
    }
    const index = ++n.writeIndex
    n.writes.push({ index, out, chosenUpTo: n.core!.chosenUpTo })
    queue.push(now + rng.int(0, options.diskDelayMs), { kind: "flush", node: n.id, incarnation: n.incarnation, write: index })
    noteBacklog(n)
  }

  const noteBacklog = (n: SimNode) => {
    const over = n.writes.length > BACKLOG_WRITES
    if (n.core === null || over === n.backlogged) return
    n.backlogged = over
    handle(n, n.core.step({ _tag: "WriteBacklog", over }, now))
  }

  /** Catch-up answers from what the node holds durably. */
  const answerReads = (n: SimNode, reads: Outputs["readChosen"]) => {
    for (const rc of reads) {
      messages.readChosen = (messages.readChosen ?? 0) + 1
      const entries = []
      let bytes = 0
      for (let i = rc.from; i < rc.from + rc.count; i++) {
        const v = storedValue(n.durable, i)
        if (v === undefined) continue
        const size = v.values.reduce((k, x) => k + x.byteLength, 0)
        if (entries.length > 0 && bytes + size > rc.maxBytes) break
        bytes += size
        entries.push({ instance: i, value: v })
      }
      send(n.id, rc.to, { _tag: "CatchupReply", entries })
    }
  }

  /** Writes up to `upTo` are durable: apply them and release what waited for them, in order. */
  const flush = (n: SimNode, upTo: number) => {
    while (n.writes.length > 0 && n.writes[0]!.index <= upTo && n.core !== null) {
      const { out, chosenUpTo } = n.writes.shift()!
      applyRecords(n.durable, out.persist, chosenUpTo)
      answerReads(n, out.readChosen)
      for (const s of out.send) {
        if (sendsBeforePersist(s.message)) continue
        if (n.core === null) return // crashed while handling an earlier loopback
        if (s.to === n.id) handle(n, n.core.step({ _tag: "Receive", from: n.id, message: s.message }, now))
        else send(n.id, s.to, s.message)
      }
    }
    noteBacklog(n)
  }

  const messages: Record<string, number> = {}
  const send = (from: number, to: number, message: PaxosMessage) => {
    messages[message._tag] = (messages[message._tag] ?? 0) + 1
    const target = nodes.get(to)!
    if (target.core === null) return
    if (groups.get(from) !== groups.get(to)) return
    if (chaos && rng.next() < options.dropRate) return
    const copies = chaos && rng.next() < options.dupRate ? 2 : 1
    for (let c = 0; c < copies; c++) {
      queue.push(now + rng.int(1, chaos ? options.maxDelayMs : 3), {
        kind: "deliver",
        to,
        from,
        message,
        incarnation: target.incarnation
      })
    }
  }

  /** A random new member set: one to three voters and any learners, from every node that exists. */
  const randomMembers = (): MemberSet => {
    const shuffled = [...everyone].sort(() => rng.next() - 0.5)
    const voters = shuffled.slice(0, rng.int(1, Math.min(3, everyone.length))).sort((a, b) => a - b)
    const learners = shuffled.slice(voters.length).filter(() => rng.next() < 0.5).sort((a, b) => a - b)
    return { voters, learners }
  }

  const propose = (n: SimNode, value: string | undefined) => {
    if (n.core === null) return
    const v = value ?? (rng.next() < options.membershipShare ? membershipValue(randomMembers(), `s${options.seed}-m${proposalsMade++}`) : `s${options.seed}-v${proposalsMade++}`)
    proposed.add(v)
    const requestId = ++requestSeq
    n.requests.set(requestId, v)
    // Some urgent (lease renewals in a real node): they jump the queue and the pipeline bound.
    handle(n, n.core.step({ _tag: "Propose", requestId, value: Buffer.from(v), urgent: rng.int(0, 3) === 0 }, now))
  }

  for (const n of nodes.values()) start(n)
  for (let i = 0; i < options.proposals; i++) {
    queue.push(rng.int(0, options.chaosMs), { kind: "propose", node: everyone[rng.int(0, everyone.length - 1)]! })
  }

  const runUntil = (limit: number, done: () => boolean) => {
    while (queue.size > 0) {
      if (queue.peekTime() > limit) return false
      const ev = queue.pop()!
      now = ev.time
      const e = ev.event
      switch (e.kind) {
        case "deliver": {
          const n = nodes.get(e.to)!
          if (n.core !== null && n.incarnation === e.incarnation && groups.get(e.from) === groups.get(e.to)) {
            handle(n, n.core.step({ _tag: "Receive", from: e.from, message: e.message }, now))
          }
          break
        }
        case "tick": {
          const n = nodes.get(e.node)!
          if (n.core === null || n.incarnation !== e.incarnation) break
          if (chaos && rng.next() < options.crashRate) {
            crash(n)
            break
          }
          handle(n, n.core.step({ _tag: "Tick" }, now))
          if (n.core === null) break
          if (rng.next() < options.compactRate) {
            // Storage drops values below a chosen instance; the core is told.
            const below = rng.int(n.core.compactedBelow, n.core.chosenUpTo)
            compactImage(n.durable, below)
            if (below > n.durable.chosenUpTo) n.durable.chosenUpTo = below
            handle(n, n.core.step({ _tag: "Compact", below }, now))
            if (n.core === null) break
          }
          const install = n.core.needsInstall
          if (install !== null) {
            // Every peer ahead compacted past us: the layer above copies a peer's state there.
            installs++
            // The copied state carries the member sets from there on (as the snapshot does).
            const configs = [trueConfigAt(install), ...trueConfigs.filter((c) => c.from > install)]
            handle(n, n.core.step({ _tag: "Install", upTo: install, configs }, now))
            if (n.core === null) break
          }
          queue.push(now + TICK_MS, { kind: "tick", node: n.id, incarnation: n.incarnation })
          if (n.id === members[0] && chaos && rng.next() < options.partitionRate) {
            // Either heal, or split into two random groups.
            groups = rng.next() < 0.4
              ? new Map(everyone.map((m) => [m, 0]))
              : new Map(everyone.map((m) => [m, rng.int(0, 1)]))
          }
          break
        }
        case "propose":
          propose(nodes.get(e.node)!, e.value)
          break
        case "flush": {
          const n = nodes.get(e.node)!
          if (n.core === null || n.incarnation !== e.incarnation) break
          // A crash just before the disk finishes: these writes and any later ones are lost.
          if (chaos && rng.next() < options.diskCrashRate) crash(n)
          else flush(n, e.write)
          break
        }
        case "finalRetry":
          if (!finalConfirmed()) proposeFinal()
          break
        case "restart": {
          const n = nodes.get(e.node)!
          if (n.core === null) start(n)
          break
        }
      }
      if (done()) return true
    }
    return false
  }

  runUntil(options.chaosMs, () => false)

  // Heal: no more faults, everyone up and connected, then one more value must get through.
  chaos = false
  groups = new Map(everyone.map((m) => [m, 0]))
  for (const n of nodes.values()) if (n.core === null) start(n)
  proposeFinal()
  const allLearned = () => {
    if (!finalConfirmed()) return false
    let max = -1
    for (const i of globalChosen.keys()) if (i > max) max = i
    for (const at of confirmed.values()) if (at.instance > max) max = at.instance
    for (const id of requiredAt(max)) {
      const n = nodes.get(id)!
      if (n.core === null || n.core.chosenUpTo <= max) return false
    }
    return true
  }
  if (!runUntil(now + options.healBoundMs, allLearned)) {
    const state = [...nodes.values()].map((n) => `${n.id}:${n.core?.chosenUpTo}/${n.core?.currentRole}/pending=${n.core?.pendingCount}/req=${n.requests.size}` + (process.env.SIM_DEBUG ? JSON.stringify({q: (n.core as any)?.queue?.length, placed: [...((n.core as any)?.placed?.keys() ?? [])], inflight: [...((n.core as any)?.inflight?.keys() ?? [])], next: (n.core as any)?.nextInstance, acc: [...((n.core as any)?.accepted?.keys() ?? [])], maxChosen: (n.core as any)?.maxChosen, voter: n.core?.isVoter, leader: (n.core as any)?.knownLeader, configs: n.core?.memberSets.map((c) => `${c.from}:${membershipValue(c)}`), fwd: [...((n.core as any)?.forwarded?.values() ?? [])].length, prom: [...((n.core as any)?.promises?.entries() ?? [])].map(([k, v]: any) => `${k}:${v.chosenUpTo}`), pcu: [...((n.core as any)?.peerChosenUpTo?.entries() ?? [])], out: (n.core as any)?.catchupOut, paused: (n.core as any)?.catchupPaused, wb: (n.core as any)?.writeBacklog}) : "")).join(" ")
    fail(`liveness: within ${options.healBoundMs} ms of healing, not every node learned every chosen instance and the final value [${state}] finalAttempts=${finalAttempts} finalConfirmed=${finalConfirmed()}`)
  }

  // The disks finish what they were writing (no crash now), then durability is checked:
  // every confirmed value is in every node's durable log where it was confirmed.
  for (let round = 0; round < 100 && [...nodes.values()].some((n) => n.writes.length > 0); round++) {
    for (const n of nodes.values()) flush(n, Infinity)
  }
  for (const [v, at] of confirmed) {
    const got = globalChosen.get(at.instance)?.values[at.index]
    if (got === undefined || text(got) !== v) fail(`confirmed ${v} at ${at.instance}/${at.index} but the log holds ${got && text(got)}` + (process.env.SIM_DEBUG ? [...nodes.values()].map((n) => ` ${n.id}:${n.core?.chosenUpTo}/${n.core?.currentRole}/max=${(n.core as any)?.maxChosen}/${n.core?.memberSets.map((c) => `${c.from}:${membershipValue(c)}`)}`).join("") : ""))
    const required = requiredAt(Math.max(...globalChosen.keys()))
    for (const n of nodes.values()) {
      if (!required.includes(n.id)) continue // not a member by the end
      if (at.instance < n.durable.compactedBelow) continue // dropped by compaction
      if (n.core !== null && at.instance >= n.core.chosenUpTo) continue // not learned here (liveness judges that)
      const got = storedValue(n.durable, at.instance)?.values[at.index]
      if (got === undefined || text(got) !== v) fail(`durability: node ${n.id} lacks confirmed ${v} at ${at.instance}/${at.index} (durable prefix ${n.durable.chosenUpTo}, from ${n.durable.compactedBelow}, core ${n.core?.chosenUpTo}, stored ${[...n.durable.log.keys()].sort((a, b) => a - b).slice(0, 8)})`)
    }
  }
  // No value twice in the log.
  const seen = new Set<string>()
  for (const value of globalChosen.values()) {
    for (const x of value.values) {
      const t = text(x)
      if (seen.has(t)) fail(`duplicate: ${t} chosen twice`)
      seen.add(t)
    }
  }
  // Every member of the final set came to see the member sets the log says.
  const lastChosen = Math.max(...globalChosen.keys())
  const final = trueConfigAt(lastChosen + 1)
  for (const id of requiredAt(lastChosen)) {
    const core = nodes.get(id)!.core
    if (core === null) continue
    const seen = core.configAt(core.chosenUpTo)
    const truth = trueConfigAt(core.chosenUpTo)
    if (seen.voters.join() !== truth.voters.join() || seen.learners.join() !== truth.learners.join()) {
      fail(`membership: node ${id} sees ${membershipValue(seen)} at ${core.chosenUpTo}, the log says ${membershipValue(truth)}`)
    }
  }
  return {
    seed: options.seed,
    failures,
    chosenInstances: globalChosen.size,
    confirmed: confirmed.size,
    crashes,
    installs,
    messages,
    membershipChanges,
    finalMembers: { voters: final.voters, learners: final.learners }
  }
}

