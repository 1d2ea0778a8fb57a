/**
 * Seeded simulation of the master lease on top of the Paxos core and the cluster state
 * machine: every node has its own clock (rate within ±rho, any offset), the network drops,
 * delays and partitions, nodes crash and restart. At every event the checker counts the
 * nodes that believe they hold the lease; two at once is a failure.
 */
import { applyRecords, emptyDurableImage, type Outputs, PaxosNode } from "../../src/domain/paxos/core.js"
import type { PaxosMessage } from "../../src/domain/paxos/messages.js"
import {
  applyEntry,
  type ClusterStateData,
  decodeEntry,
  encodeEntry,
  initialClusterState,
  type ClusterEntry,
  type Outcome
} from "../../src/domain/cluster/cluster.js"
import {
  decide,
  holdsLease,
  initialLeaseView,
  type LeaseConfig,
  type LeaseView,
  onApplied,
  onHandOver,
  onOutcome,
  onProposed,
  onResigning,
  onState,
  pauseMs
} from "../../src/domain/cluster/lease.js"
import { type Durable, durableStateOf, simPaxosConfig, storedValue } from "./paxosSim.js"
import { EventQueue, Rng } from "./sim.js"

export type LeaseScenario = "loss" | "crash-master" | "isolate-master" | "switchover" | "chaos"

export interface LeaseSimOptions {
  readonly seed: number
  readonly nodes: number
  readonly scenario: LeaseScenario
  readonly leaseMs: number
  readonly marginMs: number
  /** Clock rates lie in [1 - rho, 1 + rho]. */
  readonly rho: number
  readonly durationMs: number
  readonly dropRate: number
  /** After a fault heals (or a master dies), someone must hold the lease within this long. */
  readonly electionBoundMs: number
}

export const defaultLeaseSimOptions = (seed: number, scenario: LeaseScenario, nodes = 3): LeaseSimOptions => ({
  seed,
  nodes,
  scenario,
  leaseMs: 1_000,
  marginMs: 100,
  rho: 0.01,
  durationMs: 12_000,
  dropRate: scenario === "loss" ? 0.1 : 0.05,
  electionBoundMs: 5_000
})

export interface LeaseSimResult {
  readonly failures: ReadonlyArray<string>
  readonly elections: number
  readonly masterChanges: number
  /** Resign entries accepted (a holder whose database failed gave the lease up). */
  readonly resignations: number
  /** Switchovers asked for, and those after which the named successor was the next holder. */
  readonly handovers: number
  readonly handoversLanded: number
}

const TICK_MS = 10

type Event =
  | { readonly kind: "deliver"; readonly to: number; readonly from: number; readonly message: PaxosMessage; readonly incarnation: number }
  | { readonly kind: "tick"; readonly node: number; readonly incarnation: number }
  /**
   * The lease loop runs one step: its timer (`timer`: the pause it ends, stale once another
   * step ran) or a wake (an applied entry changed the view, readiness changed, a switchover).
   */
  | { readonly kind: "lease"; readonly node: number; readonly incarnation: number; readonly timer?: number }
  | { readonly kind: "fault" }
  | { readonly kind: "heal" }
  | { readonly kind: "restart"; readonly node: number }

interface SimNode {
  readonly id: number
  readonly rate: number
  readonly offset: number
  core: PaxosNode | null
  incarnation: number
  readonly durable: Durable
  cluster: ClusterStateData
  lease: LeaseView
  requestSeq: number
  holding: boolean
  /** Its database cannot serve until then (a holder resigns; others do not run). */
  unreadyUntil: number
  /** A switchover asked of this node (the holder): hand the lease to this node at its next step. */
  handOverTo: number | undefined
  /** The lease loop's current pause (a timer event with another number is stale). */
  leaseTimer: number
  /** Inside a lease step: view changes need no wake (the step's own pause follows). */
  inLeaseStep: boolean
}

export const runLeaseSimulation = (o: LeaseSimOptions): LeaseSimResult => {
  const rng = new Rng(o.seed)
  const members = Array.from({ length: o.nodes }, (_, i) => i + 1)
  const failures: Array<string> = []
  const fail = (m: string) => failures.length < 10 && failures.push(m)
  const queue = new EventQueue<Event>()
  let now = 0
  let faultsOn = true
  let groups = new Map<number, number>(members.map((m) => [m, 0]))
  let elections = 0
  let masterChanges = 0
  let resignations = 0
  let handovers = 0
  let handoversLanded = 0
  /** The successor of the last switchover whose next holder is not known yet. */
  let awaitingSuccessor: number | undefined
  let lastHolder: number | undefined
  /** Since when the cluster has been without faults and without a holder (for the election bound). */
  let noHolderSince: number | undefined = 0

  const leaseConfig = (id: number): LeaseConfig => ({
    nodeId: id,
    leaseMs: o.leaseMs,
    renewEveryMs: Math.floor(o.leaseMs / 3),
    marginMs: o.marginMs,
    behindPenaltyMs: 0,
    proposeTimeoutMs: Math.floor(o.leaseMs / 3)
  })
  const local = (n: SimNode) => n.offset + n.rate * now

  const nodes = new Map<number, SimNode>(members.map((id) => [id, {
    id,
    rate: 1 - o.rho + 2 * o.rho * rng.next(),
    offset: rng.int(0, 100_000),
    core: null,
    incarnation: 0,
    durable: emptyDurableImage(),
    cluster: initialClusterState(members),
    lease: initialLeaseView(initialClusterState(members), 0),
    requestSeq: 0,
    unreadyUntil: 0,
    handOverTo: undefined,
    holding: false,
    leaseTimer: 0,
    inLeaseStep: false
  }]))

  const start = (n: SimNode) => {
    n.incarnation++
    const config = simPaxosConfig(n.id, members, o.seed)
    const durable = durableStateOf(n.durable, config.memoryWindow)
    n.core = new PaxosNode(config, durable, n.incarnation)
    // The state machine resumes from the durable log (the service persists it; same result).
    let cluster = initialClusterState(members)
    for (let i = 0; i < durable.chosenUpTo; i++) {
      for (const v of storedValue(n.durable, i)!.values) {
        const entry = decodeEntry(v)
        if (entry._tag !== "Malformed") cluster = applyEntry(cluster, entry as ClusterEntry)[0]
      }
    }
    n.cluster = cluster
    n.lease = initialLeaseView(cluster, local(n))
    queue.push(now + rng.int(0, TICK_MS), { kind: "tick", node: n.id, incarnation: n.incarnation })
    wakeLease(n, now + rng.int(0, TICK_MS))
  }

  /** As MasterLease's wake queue: the loop runs a step at `at`, whatever its pause. */
  const wakeLease = (n: SimNode, at: number) => queue.push(at, { kind: "lease", node: n.id, incarnation: n.incarnation })
  /** The view changed outside a step (applied entry, outcome): the service wakes its loop. */
  const viewChanged = (n: SimNode, before: LeaseView) => {
    if (n.lease !== before && !n.inLeaseStep) wakeLease(n, now)
  }

  const send = (from: number, to: number, message: PaxosMessage) => {
    const target = nodes.get(to)!
    if (target.core === null || groups.get(from) !== groups.get(to)) return
    if (from !== to && rng.next() < o.dropRate) return
    queue.push(now + (from === to ? 0 : rng.int(1, 10)), { kind: "deliver", to, from, message, incarnation: target.incarnation })
  }

  const outcomeArrived = (n: SimNode, outcome: Outcome | "failed") => {
    const before = n.lease
    n.lease = onOutcome(leaseConfig(n.id), n.lease, outcome, local(n))
    viewChanged(n, before)
  }

  const handle = (n: SimNode, out: Outputs) => {
    // Writes are durable at once here, so every message may go now (own ones loop back).
    applyRecords(n.durable, out.persist, n.core!.chosenUpTo)
    for (const s of out.send) send(n.id, s.to, s.message)
    // Apply chosen entries in order; our own MasterLease is recognised by its proposal id.
    for (const c of out.chosen) {
      for (const v of c.value.values) {
        const entry = decodeEntry(v)
        if (entry._tag === "Malformed") continue
        const [next, outcome] = applyEntry(n.cluster, entry as ClusterEntry)
        if (entry._tag === "Resign" && outcome._tag === "Accepted" && n.id === (entry as { node: number }).node) resignations++
        n.cluster = next
        const before = n.lease
        n.lease = onState(leaseConfig(n.id), n.lease, n.cluster, local(n))
        n.lease = onApplied(leaseConfig(n.id), n.lease, entry as ClusterEntry, outcome, local(n))
        viewChanged(n, before)
      }
    }
    // Superseded: definitively not chosen.
    for (const r of out.results) if (r._tag === "Superseded") outcomeArrived(n, "failed")
    for (const rc of out.readChosen) {
      const entries = []
      for (let i = rc.from; i < rc.from + rc.count; i++) {
        const v = storedValue(n.durable, i)
        if (v !== undefined) entries.push({ instance: i, value: v })
      }
      send(n.id, rc.to, { _tag: "CatchupReply", entries })
    }
  }

  /**
   * One step of MasterLease's loop, then its pause, as the service computes it: from the
   * reading the step decided with, ended by a timer that may fire up to 1 ms early (a
   * timer's delay is whole milliseconds; the clock is read in fractions).
   */
  const stepLease = (n: SimNode) => {
    n.inLeaseStep = true
    const c = leaseConfig(n.id)
    const t = local(n)
    decideLease(n, c, t)
    n.inLeaseStep = false
    const timer = ++n.leaseTimer
    const at = now + pauseMs(c, n.lease, t) / n.rate - rng.next()
    queue.push(Math.max(now, at), { kind: "lease", node: n.id, incarnation: n.incarnation, timer })
  }

  const decideLease = (n: SimNode, c: LeaseConfig, t: number) => {
    // The holder leads the Paxos log, so its renewals need no forwarding.
    if (holdsLease(c, n.lease, t) && !n.core!.isLeader) handle(n, n.core!.step({ _tag: "Lead" }, now))
    if (n.handOverTo !== undefined && holdsLease(c, n.lease, t)) {
      // As MasterLease.handOver: holding ends now, the Resign names the successor.
      handovers++
      awaitingSuccessor = n.handOverTo
      n.lease = onHandOver(c, n.lease, n.handOverTo, t)
      const value = encodeEntry({ _tag: "Resign", node: n.id, basedOnVersion: n.lease.masterVersion, successor: n.handOverTo })
      handle(n, n.core!.step({ _tag: "Propose", requestId: ++n.requestSeq, value }, now))
    }
    n.handOverTo = undefined
    const action = decide(c, n.lease, t, now >= n.unreadyUntil, 0)
    if (action._tag === "Resign") {
      n.lease = onResigning(c, n.lease, action.basedOnVersion, t)
      const value = encodeEntry({
        _tag: "Resign",
        node: n.id,
        basedOnVersion: action.basedOnVersion,
        ...(action.successor !== undefined ? { successor: action.successor } : {})
      })
      handle(n, n.core!.step({ _tag: "Propose", requestId: ++n.requestSeq, value }, now))
    }
    if (action._tag === "Propose") {
      const proposalId = rng.int(1, 2 ** 31 - 1)
      n.lease = onProposed(n.lease, action.basedOnVersion, proposalId, t)
      const value = encodeEntry({ _tag: "MasterLease", node: n.id, basedOnVersion: action.basedOnVersion, leaseMs: o.leaseMs, proposalId })
      // Urgent, as ClusterState proposes a lease.
      handle(n, n.core!.step({ _tag: "Propose", requestId: ++n.requestSeq, value, urgent: true }, now))
    }
  }

  /** The invariant, checked after every event: at most one node believes it holds the lease. */
  const check = () => {
    const holders: Array<number> = []
    for (const n of nodes.values()) {
      const h = n.core !== null && holdsLease(leaseConfig(n.id), n.lease, local(n))
      if (h && !n.holding) {
        elections++
        if (lastHolder !== undefined && lastHolder !== n.id) masterChanges++
        lastHolder = n.id
        if (awaitingSuccessor !== undefined) {
          if (awaitingSuccessor === n.id) handoversLanded++
          awaitingSuccessor = undefined
        }
      }
      n.holding = h
      if (h) holders.push(n.id)
    }
    if (holders.length > 1) fail(`two holders at ${now} ms: nodes ${holders.join(", ")}`)
    if (holders.length > 0) noHolderSince = undefined
    else if (noHolderSince === undefined) noHolderSince = now
    if (!faultsOn && noHolderSince !== undefined && now - noHolderSince > o.electionBoundMs) {
      fail(`no master for ${now - noHolderSince} ms without faults (bound ${o.electionBoundMs})`)
      noHolderSince = now
    }
  }

  const crash = (id: number) => {
    const n = nodes.get(id)!
    n.core = null
    queue.push(now + rng.int(200, 2_000), { kind: "restart", node: id })
  }

  for (const n of nodes.values()) start(n)
  // Faults: the scenario's kind of fault every 2-3 s during the first part of the run.
  if (o.scenario !== "loss") {
    for (let t = 2_500; t < o.durationMs - 4_000; t += rng.int(2_000, 3_000)) queue.push(t, { kind: "fault" })
  }

  faultsOn = false
  while (queue.size > 0 && queue.peekTime() <= o.durationMs) {
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
        handle(n, n.core.step({ _tag: "Tick" }, now))
        queue.push(now + TICK_MS, { kind: "tick", node: n.id, incarnation: n.incarnation })
        break
      }
      case "lease": {
        const n = nodes.get(e.node)!
        if (n.core === null || n.incarnation !== e.incarnation || (e.timer !== undefined && e.timer !== n.leaseTimer)) break
        stepLease(n)
        break
      }
      case "fault": {
        faultsOn = true
        noHolderSince = undefined
        const holder = [...nodes.values()].find((n) => n.holding)?.id ?? members[rng.int(0, members.length - 1)]!
        const kind = o.scenario === "chaos" ? (["crash-master", "isolate-master", "split", "switchover"] as const)[rng.int(0, 3)] : o.scenario
        if (kind === "switchover") {
          // A planned switchover to another node, sometimes with a fault on top (chaos).
          const others = members.filter((m) => m !== holder)
          nodes.get(holder)!.handOverTo = others[rng.int(0, others.length - 1)]!
          wakeLease(nodes.get(holder)!, now)
          if (o.scenario === "chaos" && rng.int(0, 1) === 0) crash(holder)
          queue.push(now + rng.int(500, 1_500), { kind: "heal" })
          break
        }
        // Sometimes the holder's database fails too: it resigns instead of waiting the lease out.
        if (rng.int(0, 2) === 0) {
          // Readiness changes wake the loop (MasterLease follows readiness.changes).
          const n = nodes.get(holder)!
          n.unreadyUntil = now + rng.int(200, 2_000)
          wakeLease(n, now)
          wakeLease(n, n.unreadyUntil)
        }
        if (kind === "crash-master") crash(holder)
        else if (kind === "isolate-master") groups = new Map(members.map((m) => [m, m === holder ? 1 : 0]))
        else groups = new Map(members.map((m) => [m, rng.int(0, 1)]))
        queue.push(now + rng.int(500, 1_500), { kind: "heal" })
        break
      }
      case "heal":
        groups = new Map(members.map((m) => [m, 0]))
        faultsOn = false
        noHolderSince = now
        break
      case "restart": {
        const n = nodes.get(e.node)!
        if (n.core === null) start(n)
        break
      }
    }
    check()
  }
  if (o.scenario === "loss" && masterChanges > 0) fail(`message loss alone changed the master ${masterChanges} times`)
  // Nor may the holder's own lease lapse (a renewal the loop slept through shows as a lapse
  // and an election of the same node).
  if (o.scenario === "loss" && elections > 1) fail(`under message loss alone the lease lapsed and was taken again ${elections - 1} times`)
  if (elections === 0) fail("no node ever held the lease")
  return { failures, elections, masterChanges, resignations, handovers, handoversLanded }
}
