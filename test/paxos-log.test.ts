import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber, Stream } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { freePort } from "../src/services/LocalCluster.js"
import * as PaxosLog from "../src/services/PaxosLog.js"
import * as PaxosStorage from "../src/services/PaxosStorage.js"

const tempDir = Effect.acquireRelease(
  Effect.sync(() => mkdtempSync(join(tmpdir(), "phxmaria-log-"))),
  (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
)

const bytes = (s: string) => new Uint8Array(Buffer.from(s))
const text = (b: Uint8Array) => Buffer.from(b).toString()

/** Starts the given members of a cluster in this process; returns their logs by node id. */
const startLogs = (ids: ReadonlyArray<number>, memberCount: number, proposeTimeoutMs = 10_000) =>
  Effect.gen(function*() {
    const dir = yield* tempDir
    const members = yield* Effect.forEach(Array.from({ length: memberCount }, (_, i) => i + 1), (nodeId) =>
      Effect.map(freePort(), (port) => ({ nodeId, host: "127.0.0.1", port })))
    const logs = new Map<number, PaxosLog.PaxosLogShape>()
    for (const nodeId of ids) {
      const storage = yield* PaxosStorage.make(join(dir, `n${nodeId}`))
      const log = yield* PaxosLog.make({ clusterId: "log-test", nodeId, members, proposeTimeoutMs }).pipe(
        Effect.provideService(PaxosStorage.PaxosStorage, storage)
      )
      logs.set(nodeId, log)
    }
    return logs
  })

describe("PaxosLog service", () => {
  it.live("propose completes with the value's position; chosen() streams history then live entries", () =>
    Effect.gen(function*() {
      const logs = yield* startLogs([1, 2, 3], 3)
      const n1 = logs.get(1)!
      const n2 = logs.get(2)!
      const n3 = logs.get(3)!
      const first = yield* Effect.forEach(Array.from({ length: 20 }, (_, i) => `a${i}`), (v) =>
        Effect.map(n1.propose(bytes(v)), (pos) => [v, pos] as const), { concurrency: 8 })
      const second = yield* Effect.forEach(Array.from({ length: 5 }, (_, i) => `b${i}`), (v) =>
        Effect.map(n2.propose(bytes(v)), (pos) => [v, pos] as const), { concurrency: 2 })
      const confirmed = [...first, ...second]
      const last = Math.max(...confirmed.map(([, p]) => p.instance))

      // History on another node: every confirmed value where its proposer was told.
      const history = yield* n3.chosen(0).pipe(Stream.take(last + 1), Stream.runCollect)
      expect(history.map((e) => e.instance)).toEqual(Array.from({ length: last + 1 }, (_, i) => i))
      for (const [v, pos] of confirmed) expect(text(history[pos.instance]!.value.values[pos.index]!)).toBe(v)

      // From a later instance, then a live entry proposed after subscribing.
      const live = yield* n3.chosen(last).pipe(
        Stream.filter((e) => e.value.values.some((x) => text(x) === "live")),
        Stream.take(1),
        Stream.runCollect,
        Effect.forkChild
      )
      const at = yield* n1.propose(bytes("live"))
      const got = yield* Fiber.join(live)
      expect(got.map((e) => e.instance)).toEqual([at.instance])
      const status = yield* n1.status
      expect(status.role).toBe("leader")
      expect(status.chosenUpTo).toBeGreaterThan(at.instance)
    }))

  it.live("a node cut off from the majority fails proposals with NotEnoughNodes", () =>
    Effect.gen(function*() {
      const logs = yield* startLogs([1], 3, 500)
      const error = yield* Effect.flip(logs.get(1)!.propose(bytes("alone")))
      expect(error._tag).toBe("NotEnoughNodes")
      expect(error).toMatchObject({ reachable: 1, quorum: 2 })
    }))
})
