import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber, Ref } from "effect"
import type { PaxosValue } from "../src/domain/paxos/messages.js"
import * as LocalCluster from "../src/testing/LocalCluster.js"
import * as PaxosClient from "../src/client/PaxosClient.js"
import type { Position } from "../src/services/paxos/PaxosLog.js"
import * as PaxosStorage from "../src/services/paxos/PaxosStorage.js"
import { join } from "node:path"

/**
 * Three real node processes on loopback: values proposed through every node while one
 * node is SIGKILLed and restarted. At the end every node holds the identical log and
 * every confirmed value is in it, exactly once, where its proposer was told.
 */
describe("Paxos log across processes", () => {
  it.live("keeps one identical log through a SIGKILL and restart", () =>
    Effect.gen(function*() {
      const cluster = yield* LocalCluster.make({ nodes: 3, clusterId: "paxos-it", paxos: { acceptClients: true } })
      const confirmed = yield* Ref.make(new Map<string, Position>())
      const client = (nodeIndex: number) => {
        const node = cluster.nodes[nodeIndex]!
        return PaxosClient.connect({ clusterId: cluster.clusterId, host: "127.0.0.1", port: node.peerPort })
      }
      /** Proposes `count` values named prefix-i, `parallel` at a time, recording confirmations. */
      const proposeMany = (c: PaxosClient.PaxosClient, prefix: string, count: number, parallel: number) =>
        Effect.forEach(
          Array.from({ length: count }, (_, i) => `${prefix}-${i}`),
          (v) =>
            c.propose(new Uint8Array(Buffer.from(v))).pipe(
              // Superseded means definitively not chosen (e.g. the leader changed): safe to retry.
              Effect.retry({ while: (e) => e._tag === "Superseded", times: 5 }),
              Effect.tap((pos) => Ref.update(confirmed, (m) => new Map(m).set(v, pos))),
              // Timeouts and dropped connections are indeterminate: checked below only if confirmed.
              Effect.ignore
            ),
          { concurrency: parallel, discard: true }
        )
      const confirmedCount = Effect.map(Ref.get(confirmed), (m) => m.size)

      const c1 = yield* client(0)
      const c3 = yield* client(2)
      const c2 = yield* client(1)
      const f1 = yield* Effect.forkChild(proposeMany(c1, "n1", 150, 4))
      const f3 = yield* Effect.forkChild(proposeMany(c3, "n3", 150, 4))
      const f2 = yield* Effect.forkChild(proposeMany(c2, "n2a", 1_000, 2))

      yield* LocalCluster.waitFor(
        "50 confirmed values, 5 of them through node 2",
        Effect.map(Ref.get(confirmed), (m) => m.size >= 50 && [...m.keys()].filter((v) => v.startsWith("n2a-")).length >= 5),
        60_000
      )
      yield* cluster.nodes[1]!.kill("SIGKILL")
      yield* Fiber.join(f2)
      yield* LocalCluster.waitFor("100 confirmed values", Effect.map(confirmedCount, (n) => n >= 100), 60_000)
      yield* cluster.nodes[1]!.start
      const c2b = yield* client(1)
      yield* proposeMany(c2b, "n2b", 40, 4)
      yield* Fiber.join(f1)
      yield* Fiber.join(f3)

      const positions = [...(yield* Ref.get(confirmed)).values()]
      const end = Math.max(...positions.map((p) => p.instance)) + 1
      const clients = [c1, c2b, c3]
      yield* LocalCluster.waitFor(
        `every node to learn instances below ${end}`,
        Effect.map(Effect.forEach(clients, (c) => c.status), (ss) => ss.every((s) => s.chosenUpTo >= end)),
        30_000
      )
      const upTo = Math.min(...(yield* Effect.forEach(clients, (c) => c.status)).map((s) => s.chosenUpTo))

      // Stop the processes, then read each node's durable log.
      yield* Effect.forEach(cluster.nodes, (n) => n.kill("SIGKILL"), { discard: true })
      const logs = yield* Effect.forEach(cluster.nodes, (n) =>
        Effect.scoped(Effect.gen(function*() {
          const storage = yield* PaxosStorage.make(join(n.dir, "data", "paxos"))
          return yield* storage.readChosen(0, upTo)
        })))
      const text = (v: PaxosValue) => v.values.map((x) => Buffer.from(x).toString())
      const reference = logs[0]!.map((e) => ({ instance: e.instance, values: text(e.value) }))
      expect(reference.map((e) => e.instance)).toEqual(Array.from({ length: upTo }, (_, i) => i))
      for (const log of logs.slice(1)) {
        expect(log.map((e) => ({ instance: e.instance, values: text(e.value) }))).toEqual(reference)
      }
      const all = reference.flatMap((e) => e.values)
      expect(new Set(all).size).toBe(all.length) // no value twice
      for (const [v, pos] of yield* Ref.get(confirmed)) {
        expect(reference[pos.instance]?.values[pos.index]).toBe(v)
      }
      // Every phase made progress: values through node 1, node 3 and the restarted node 2.
      const names = [...(yield* Ref.get(confirmed)).keys()]
      for (const prefix of ["n1-", "n3-", "n2a-", "n2b-"]) expect(names.some((n) => n.startsWith(prefix))).toBe(true)
      expect(names.filter((n) => n.startsWith("n2b-")).length).toBe(40)
    }), { timeout: 180_000 })
})
