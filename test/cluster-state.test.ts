import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber, Option, Stream } from "effect"
import { join } from "node:path"
import type { Outcome } from "../src/domain/cluster/cluster.js"
import * as ClusterState from "../src/services/cluster/ClusterState.js"
import { PaxosLog } from "../src/services/paxos/PaxosLog.js"
import { startLogs } from "./support/inProcessLogs.js"

const reasonOf = (o: Outcome) => (o._tag === "Rejected" ? o.reason._tag : o._tag)

/** Three in-process logs; `open(n)` starts node n's cluster state on its log (in the caller's scope). */
const stateServices = Effect.map(startLogs([1, 2, 3], 3), ({ logs, dir }) => (nodeId: number) =>
  ClusterState.make({ dir: join(dir, `state${nodeId}`), members: [1, 2, 3] }).pipe(Effect.provideService(PaxosLog, logs.get(nodeId)!)))

describe("ClusterState service", () => {
  it.live("applies chosen entries on every node, answers proposers with outcomes, and resumes after a restart", () =>
    Effect.gen(function*() {
      const open = yield* stateServices
      // Node 3's state service runs only in the scoped blocks below (it is restarted there).
      const [s1, s2] = [yield* open(1), yield* open(2)]

      const lease = (node: number, basedOnVersion: number) =>
        ({ _tag: "MasterLease", node, basedOnVersion, leaseMs: 1000, proposalId: node * 100 + basedOnVersion }) as const
      expect(reasonOf(yield* s1.propose(lease(1, 0)))).toBe("Accepted")
      expect(reasonOf(yield* s2.propose(lease(2, 0)))).toBe("StaleMasterVersion")
      const txn = { gtid: { domain: 0, server: 1, seq: 1 }, events: new Uint8Array([1, 2, 3]) }
      expect(reasonOf(yield* s2.propose({ _tag: "Binlog", node: 2, epoch: 1, prevGtid: null, txns: [txn] }))).toBe("NotMaster")
      expect(reasonOf(yield* s1.propose({ _tag: "Binlog", node: 1, epoch: 1, prevGtid: null, txns: [txn] }))).toBe("Accepted")
      expect(reasonOf(yield* s1.propose({ _tag: "Binlog", node: 1, epoch: 1, prevGtid: null, txns: [txn] }))).toBe("AlreadyAccepted")

      // Every node applies the same entries to the same state.
      const target = (yield* s1.current).appliedUpTo
      const caughtUp = (s: ClusterState.ClusterStateShape) => Effect.andThen(s.awaitApplied(target), Effect.map(s.current, Option.some))
      const snapshots = [yield* caughtUp(s1), yield* caughtUp(s2), yield* Effect.scoped(Effect.flatMap(open(3), caughtUp))]
      for (const snap of snapshots) {
        expect(snap._tag).toBe("Some")
        if (snap._tag === "Some") {
          expect(snap.value.state).toMatchObject({ master: 1, masterVersion: 1, epoch: 1, lastGtid: { domain: 0, server: 1, seq: 1 } })
        }
      }

      // Node 3's state service restarts on the same directory: it resumes where it was, and
      // the first entry it applies afterwards is a new one (nothing re-applied).
      const before = yield* Effect.scoped(Effect.flatMap(open(3), (s) => Effect.flatMap(caughtUp(s), () => s.current)))
      const reopened = yield* Effect.scoped(Effect.gen(function*() {
        const s = yield* open(3)
        const resumed = yield* s.current
        const applied = yield* s.applied
        const first = yield* Effect.forkChild(applied.pipe(Stream.take(1), Stream.runCollect))
        yield* s1.propose({ _tag: "Noop", node: 1, nonce: 42 })
        return { resumed, first: yield* Fiber.join(first) }
      }))
      expect(reopened.resumed.appliedUpTo).toBeGreaterThanOrEqual(before.appliedUpTo)
      expect(reopened.resumed.state).toEqual(before.state)
      expect(reopened.first.map((a) => a.entry?._tag)).toEqual(["Noop"])
    }))

  it.live("a binlog server's wait for the next transaction: answers false when its time runs out, true once the log accepts it", () =>
    Effect.gen(function*() {
      const open = yield* stateServices
      const [s1, s2] = [yield* open(1), yield* open(2)]
      expect(reasonOf(yield* s1.propose({ _tag: "MasterLease", node: 1, basedOnVersion: 0, leaseMs: 1000, proposalId: 1 }))).toBe("Accepted")

      // Nothing accepted yet: nothing to read, and a bounded wait ends with false.
      expect(yield* s2.transactionsFrom(1, 10)).toEqual([])
      expect(yield* s2.awaitSeqWithin(1, 30)).toBe(false)
      const waiting = yield* Effect.forkChild(s2.awaitSeqWithin(1, 60_000))
      // A wait given up (interrupted) must not be woken later.
      const abandoned = yield* Effect.forkChild(s2.awaitSeqWithin(1, 60_000))
      yield* Fiber.interrupt(abandoned)

      const txn = { gtid: { domain: 0, server: 1, seq: 1 }, events: new Uint8Array([1, 2, 3]) }
      expect(reasonOf(yield* s1.propose({ _tag: "Binlog", node: 1, epoch: 1, prevGtid: null, txns: [txn] }))).toBe("Accepted")
      expect(yield* Fiber.join(waiting)).toBe(true)
      expect(yield* s2.awaitSeqWithin(1, 30)).toBe(true)
      expect((yield* s2.transactionsFrom(1, 10)).map((t) => t.gtid.seq)).toEqual([1])
      expect(yield* s2.transactionsFrom(2, 10)).toEqual([])
    }))
})
