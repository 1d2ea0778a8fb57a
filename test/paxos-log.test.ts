import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber, Result, Schedule, Schema, Stream } from "effect"
import { decodePayload, encodeFrame } from "../src/domain/wire/frame.js"
import * as PaxosLog from "../src/services/paxos/PaxosLog.js"
import { startLogs } from "./support/inProcessLogs.js"

const bytes = (s: string) => new Uint8Array(Buffer.from(s))
const text = (b: Uint8Array) => Buffer.from(b).toString()

describe("PaxosLog service", () => {
  it.live("propose completes with the value's position; chosen() streams history then live entries", () =>
    Effect.gen(function*() {
      const { logs } = yield* startLogs([1, 2, 3], 3)
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

  it.live("flags a node advertises reach its peers on the heartbeat, and go stale when it stops", () =>
    Effect.gen(function*() {
      const { logs } = yield* startLogs([1, 2, 3], 3)
      yield* logs.get(1)!.advertise(() => 5)
      yield* logs.get(3)!.advertise(() => 2)
      const seen = (id: number) => logs.get(id)!.advertised(2_000)
      // Heartbeats go out every 500 ms: bounded wait for both to arrive at node 2.
      const flags = yield* seen(2).pipe(
        Effect.repeat({ until: (m) => m.get(1) === 5 && m.get(3) === 2, schedule: Schedule.spaced("50 millis") }),
        Effect.timeout("5 seconds")
      )
      expect(flags.has(2)).toBe(false)
      // A heartbeat older than the age asked for does not count.
      expect((yield* logs.get(2)!.advertised(-1)).size).toBe(0)
    }))

  it.live("a leader cut off from both peers fails proposals with NotEnoughNodes, and commits again once healed", () =>
    Effect.gen(function*() {
      const { logs, network } = yield* startLogs([1, 2, 3], 3, 500)
      const one = logs.get(1)!
      yield* one.propose(bytes("before"))
      network.cut(1, 2)
      network.cut(1, 3)
      const error = yield* Effect.flip(one.propose(bytes("cut off")))
      expect(error._tag).toBe("NotEnoughNodes")
      network.heal()
      // Proposals fail fast while the links come back (heartbeats): retried, bounded.
      const at = yield* one.propose(bytes("healed")).pipe(Effect.retry({ times: 20 }), Effect.timeout("15 seconds"))
      // Node 3 may not have learned the instance yet: valueAt waits for it (and for it only).
      const value = yield* logs.get(3)!.valueAt(at.instance)
      expect(text(value.values[at.index]!)).toBe("healed")
    }))

  it.live("a node cut off from the majority fails proposals with NotEnoughNodes", () =>
    Effect.gen(function*() {
      const { logs } = yield* startLogs([1], 3, 500)
      const error = yield* Effect.flip(logs.get(1)!.propose(bytes("alone")))
      expect(error._tag).toBe("NotEnoughNodes")
      expect(error).toMatchObject({ reachable: 1, quorum: 2 })
    }))

  it("the fast codec agrees with the NodeMessage schema, and takes the hot messages", () => {
    const decodeSchema = Schema.decodeUnknownResult(PaxosLog.NodeMessage as Schema.Codec<PaxosLog.NodeMessage, unknown>)
    const encodeSchema = Schema.encodeUnknownResult(PaxosLog.NodeMessage as Schema.Codec<PaxosLog.NodeMessage, unknown>)
    const { decode, encode } = PaxosLog.nodeMessageFastPath
    const ballot = { round: 3, node: 2 }
    const value = { proposer: 1, round: 3, seq: 7, values: [bytes("a"), bytes(""), bytes("ccc")] }
    const hot: Array<unknown> = [
      { _tag: "Accept", ballot, instance: 5, value },
      { _tag: "Accept", ballot, instance: 0, value: { ...value, values: [] } },
      { _tag: "Accepted", ballot, instance: 5 },
      { _tag: "Commit", ballot, instances: [1, 2, 3] },
      { _tag: "Commit", ballot, instances: [] },
      { _tag: "Status", chosenUpTo: 1, maxChosen: 0, leader: null },
      { _tag: "Status", chosenUpTo: 0, maxChosen: -1, leader: ballot },
      { _tag: "ClientPropose", id: 9, value: bytes("v") },
      { _tag: "ClientChosen", id: 9, instance: 4, index: 0 }
    ]
    const invalid: Array<unknown> = [
      { _tag: "Accept", ballot, instance: -1, value },
      { _tag: "Accept", ballot, instance: 1.5, value },
      { _tag: "Accept", ballot: { round: 1 }, instance: 1, value },
      { _tag: "Accept", ballot, instance: 1, value: { ...value, values: ["a"] } },
      { _tag: "Accept", ballot, instance: 1, value: { ...value, seq: "1" } },
      { _tag: "Accepted", ballot, instance: 2 ** 60 },
      { _tag: "Commit", ballot, instances: [1, -2] },
      { _tag: "Commit", ballot, instances: {} },
      { _tag: "ClientPropose", id: 1, value: [1, 2] },
      { _tag: "ClientChosen", id: 1, instance: 4 },
      { _tag: "Status", chosenUpTo: -1, maxChosen: 0, leader: null },
      { _tag: "Status", chosenUpTo: 1, maxChosen: 0.5, leader: null },
      { _tag: "Status", chosenUpTo: 1, maxChosen: 0, leader: { round: 1 } },
      { _tag: "Status", chosenUpTo: 1, maxChosen: 0 },
      { _tag: "Nope" },
      [1, 2],
      null,
      7
    ]
    // Through the wire, as the transport sees them: msgpack turns Uint8Arrays into Buffers.
    const wire = (u: unknown) => Result.getOrThrow(decodePayload(encodeFrame(u).subarray(4)))
    for (const m of hot) {
      const raw = wire({ ...(m as object), extra: "ignored" })
      const fast = decode(raw)
      expect(fast).toBeDefined()
      expect(fast).toEqual(Result.getOrThrow(decodeSchema(raw)))
      expect(encode(fast!)).toEqual(Result.getOrThrow(encodeSchema(fast)))
    }
    for (const m of invalid) {
      const raw = wire(m)
      expect(decode(raw)).toBeUndefined()
      expect(Result.isFailure(decodeSchema(raw))).toBe(true)
    }
    // Messages the fast path leaves alone still decode (through the schema).
    const request = wire({ _tag: "CatchupRequest", from: 1, count: 5 })
    expect(decode(request)).toBeUndefined()
    expect(Result.isSuccess(decodeSchema(request))).toBe(true)
  })
})
