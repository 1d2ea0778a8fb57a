import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Scope, Stream } from "effect"
import { join } from "node:path"
import { defaultLeaseConfig } from "../src/domain/cluster/lease.js"
import * as ClusterState from "../src/services/cluster/ClusterState.js"
import { freePort } from "../src/testing/LocalCluster.js"
import * as MasterLease from "../src/services/cluster/MasterLease.js"
import * as PaxosLog from "../src/services/paxos/PaxosLog.js"
import * as PaxosStorage from "../src/services/paxos/PaxosStorage.js"
import * as Transport from "../src/services/paxos/Transport.js"
import { tempDir } from "./support/inProcessLogs.js"

const LEASE_MS = 600

describe("MasterLease service", () => {
  it.live("publishes TookOver on election and SteppedDown before the lease ends when the majority is gone", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const members = yield* Effect.forEach([1, 2, 3], (nodeId) =>
        Effect.map(freePort(), (port) => ({ nodeId, host: "127.0.0.1", port })))
      // Each node in a scope of its own, so that nodes can be stopped one by one.
      const nodes = yield* Effect.forEach(members, ({ nodeId }) =>
        Effect.gen(function*() {
          const scope = yield* Scope.make()
          yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
          const lease = yield* Effect.gen(function*() {
            const storage = yield* PaxosStorage.make(join(dir, `p${nodeId}`))
            // Real TCP here: stopping a node closes its sockets, as a crash would.
            const log = yield* PaxosLog.make({ clusterId: "lease-test", nodeId, members }).pipe(
              Effect.provideService(PaxosStorage.PaxosStorage, storage),
              Effect.provide(Transport.tcpLayer)
            )
            const state = yield* ClusterState.make({ dir: join(dir, `s${nodeId}`), members: [1, 2, 3] }).pipe(
              Effect.provideService(PaxosLog.PaxosLog, log)
            )
            return yield* MasterLease.make(defaultLeaseConfig(nodeId, LEASE_MS)).pipe(
              Effect.provideService(PaxosLog.PaxosLog, log),
              Effect.provideService(ClusterState.ClusterState, state),
              Effect.provideService(MasterLease.Readiness, MasterLease.Readiness.of({ check: Effect.succeed({ ready: true, lag: 0 }), changes: Effect.never }))
            )
          }).pipe(Scope.provide(scope))
          const events = yield* lease.events
          return { nodeId, scope, lease, events }
        }))

      // Exactly one node takes over, and says so.
      const firstTakeOver = yield* Effect.raceAll(nodes.map((n) =>
        n.events.pipe(Stream.filter((e) => e._tag === "TookOver"), Stream.take(1), Stream.runCollect, Effect.as(n))))
      expect(yield* firstTakeOver.lease.isMaster).toBe(true)
      const masters = yield* Effect.forEach(nodes, (n) => n.lease.isMaster)
      expect(masters.filter(Boolean)).toHaveLength(1)

      // Stop the two others: the master cannot renew and steps down before its lease ends.
      for (const n of nodes) if (n !== firstTakeOver) yield* Scope.close(n.scope, Exit.void)
      const t0 = performance.now()
      const down = yield* firstTakeOver.events.pipe(Stream.filter((e) => e._tag === "SteppedDown"), Stream.take(1), Stream.runCollect)
      expect(down).toHaveLength(1)
      expect(performance.now() - t0).toBeLessThan(LEASE_MS)
      expect(yield* firstTakeOver.lease.isMaster).toBe(false)
    }), { timeout: 30_000 })
})
