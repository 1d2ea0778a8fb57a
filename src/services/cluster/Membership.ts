/**
 * Membership changes (docs/architecture.md, "Membership"), asked of the master: the member
 * set is a value of the log (a Membership entry), and the Paxos core takes it up
 * CONFIG_WINDOW instances after it is chosen. One change at a time, each checked first: the
 * node is (or is not) a member, and the new set keeps a majority of its voters reachable.
 */
import { Data, Effect, Schedule, Semaphore } from "effect"
import { type ClusterMember, describeMembers, memberSetOf } from "../../domain/cluster/cluster.js"
import { quorumOf } from "../../domain/paxos/core.js"
import { ClusterState } from "./ClusterState.js"
import { MasterLease } from "./MasterLease.js"
import { PaxosLog } from "../paxos/PaxosLog.js"

/** Why a membership change was not made (409 with the message). */
export class MembershipRefused extends Data.TaggedError("MembershipRefused")<{ readonly reason: string }> {
  override get message() {
    return this.reason
  }
}

export interface MembershipDone {
  readonly members: ReadonlyArray<ClusterMember>
  /** The Paxos instance from which the new member set governs. */
  readonly from: number
}

/** How long a change waits for the log to take up the new member set. */
const TAKE_EFFECT_MS = 15_000

export const make = Effect.fnUntraced(function*(options: {
  readonly nodeId: number
  /** The founding members (from the config) while the log holds no Membership yet: all voters. */
  readonly founding: ReadonlyArray<Omit<ClusterMember, "voter">>
}) {
  const cluster = yield* ClusterState
  const log = yield* PaxosLog
  const lease = yield* MasterLease
  const lock = yield* Semaphore.make(1)
  const refused = (reason: string) => new MembershipRefused({ reason })

  const current = Effect.map(cluster.current, (s): ReadonlyArray<ClusterMember> =>
    s.state.membership ?? options.founding.map((m) => ({ ...m, voter: true })))

  const mustBeMaster = Effect.gen(function*() {
    if (yield* lease.isMaster) return
    const master = (yield* cluster.current).state.master
    return yield* refused(`node ${options.nodeId} is not the master (master: ${master ?? "none"}): ask the master`)
  })

  /** Proposes `members` as the new set and waits until the log governs by it. */
  const change = (members: ReadonlyArray<ClusterMember>, why: string) =>
    Effect.gen(function*() {
      yield* mustBeMaster
      const set = memberSetOf(members)
      if (set.voters.length === 0) return yield* refused("the cluster would have no voter")
      // The new voters must be able to choose: a majority of them reachable from here.
      const reachable = new Set([options.nodeId, ...(yield* log.status).reachable])
      const up = set.voters.filter((v) => reachable.has(v)).length
      if (up < quorumOf(set)) {
        return yield* refused(`only ${up} of the new set's ${set.voters.length} voters are reachable (a majority needs ${quorumOf(set)})`)
      }
      yield* Effect.logInfo(`membership: ${why}; proposing ${describeMembers(members)}`)
      const outcome = yield* cluster.propose({ _tag: "Membership", members: [...members] }).pipe(
        Effect.mapError((e) => refused(`the change was not chosen: ${e.message}`))
      )
      if (outcome._tag === "Rejected") return yield* refused(`the change was rejected: ${outcome.reason._tag}`)
      const key = (ids: ReadonlyArray<number>) => [...ids].sort((a, b) => a - b).join(",")
      const governing = yield* log.memberSets.pipe(
        Effect.map((sets) => sets[0]!),
        Effect.repeat({
          schedule: Schedule.spaced("10 millis"),
          until: (c) => key(c.voters) === key(set.voters) && key(c.learners) === key(set.learners)
        }),
        Effect.timeoutOrElse({
          duration: `${TAKE_EFFECT_MS} millis`,
          orElse: () => Effect.fail(refused(`the change was chosen but the log did not take it up within ${TAKE_EFFECT_MS / 1000} s`))
        })
      )
      yield* Effect.logInfo(`membership: ${describeMembers(members)} governs from instance ${governing.from}`)
      return { members, from: governing.from } satisfies MembershipDone
    })

  /** Removes node `id` (not the master: hand over first). */
  const remove = (id: number) =>
    lock.withPermits(1)(Effect.gen(function*() {
      yield* mustBeMaster
      const members = yield* current
      if (!members.some((m) => m.nodeId === id)) return yield* refused(`node ${id} is not a member (members: ${members.map((m) => m.nodeId).join(", ")})`)
      if (id === options.nodeId) return yield* refused(`node ${id} is the master: move the master elsewhere first (switchover)`)
      return yield* change(members.filter((m) => m.nodeId !== id), `removing node ${id}`)
    }))

  /** Adds a node as a learner: it gets the log (and a copy of a peer's database) but does not vote yet. */
  const add = (member: Omit<ClusterMember, "voter">) =>
    lock.withPermits(1)(Effect.gen(function*() {
      yield* mustBeMaster
      const members = yield* current
      if (members.some((m) => m.nodeId === member.nodeId)) return yield* refused(`node ${member.nodeId} is a member already`)
      return yield* change([...members, { ...member, voter: false }], `adding node ${member.nodeId} as a learner`)
    }))

  /** Makes a learner a voter, once it has caught up (it says so on its heartbeat). */
  const promote = (id: number, caughtUp: Effect.Effect<boolean>) =>
    lock.withPermits(1)(Effect.gen(function*() {
      yield* mustBeMaster
      const members = yield* current
      const m = members.find((x) => x.nodeId === id)
      if (m === undefined) return yield* refused(`node ${id} is not a member: add it first`)
      if (m.voter) return { members, from: 0 } satisfies MembershipDone
      if (!(yield* caughtUp)) return yield* refused(`node ${id} has not caught up with the log yet`)
      return yield* change(members.map((x) => x.nodeId === id ? { ...x, voter: true } : x), `making node ${id} a voter`)
    }))

  /** How long a replace waits for the new node to catch up before it gives up (it stays a learner). */
  const REPLACE_CATCH_UP_MS = 30 * 60_000

  /**
   * Replaces node `old` by a new node: added as a learner, made a voter once caught up,
   * then `old` removed (in that order, so the voters never lose their majority). The master
   * itself is not replaced here: hand it over first.
   */
  const replace = (old: number, member: Omit<ClusterMember, "voter">, caughtUp: Effect.Effect<boolean>) =>
    Effect.gen(function*() {
      yield* mustBeMaster
      const members = yield* current
      if (!members.some((m) => m.nodeId === old)) return yield* refused(`node ${old} is not a member`)
      if (old === options.nodeId) return yield* refused(`node ${old} is the master: move the master elsewhere first (switchover)`)
      if (!members.some((m) => m.nodeId === member.nodeId)) yield* add(member)
      yield* caughtUp.pipe(
        Effect.repeat({ schedule: Schedule.spaced("500 millis"), until: (ok) => ok }),
        Effect.timeoutOrElse({
          duration: `${REPLACE_CATCH_UP_MS} millis`,
          orElse: () => Effect.fail(refused(`node ${member.nodeId} did not catch up within 30 min: it stays a learner, node ${old} stays`))
        })
      )
      yield* promote(member.nodeId, caughtUp)
      return yield* remove(old)
    })

  return { current, remove, add, promote, replace }
})
