import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import type { PersistRecord } from "../src/domain/paxos/core.js"
import type { PaxosValue } from "../src/domain/paxos/messages.js"
import * as PaxosStorage from "../src/services/PaxosStorage.js"
import { bytesAsText } from "./support/bytes.js"

const value = (seq: number, ...texts: Array<string>): PaxosValue => ({
  proposer: 1,
  round: 3,
  seq,
  values: texts.map((t) => new Uint8Array(Buffer.from(t)))
})

const tempDir = Effect.acquireRelease(
  Effect.sync(() => mkdtempSync(join(tmpdir(), "phxmaria-storage-"))),
  (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
)

describe("PaxosStorage", () => {
  it.effect("reopening the same directory restores the durable state exactly", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const records: Array<PersistRecord> = [
        { _tag: "Promised", ballot: { round: 2, node: 1 } },
        { _tag: "ProposerRound", round: 4 },
        { _tag: "Accepted", instance: 0, ballot: { round: 2, node: 1 }, value: value(0, "a") },
        { _tag: "Chosen", instance: 0, value: value(0, "a") },
        { _tag: "Chosen", instance: 1, value: value(1, "b", "c") },
        { _tag: "Accepted", instance: 2, ballot: { round: 2, node: 1 }, value: value(2, "d") },
        { _tag: "Accepted", instance: 5, ballot: { round: 3, node: 2 }, value: value(5, "e") },
        { _tag: "Chosen", instance: 4, value: value(4) },
        { _tag: "Promised", ballot: { round: 3, node: 2 } }
      ]
      yield* Effect.scoped(Effect.gen(function*() {
        const s = yield* PaxosStorage.make(dir)
        yield* s.persist(records.slice(0, 4))
        yield* s.persist(records.slice(4))
      }))
      const loaded = yield* Effect.scoped(Effect.gen(function*() {
        const s = yield* PaxosStorage.make(dir)
        return { state: yield* s.load(1), range: yield* s.readChosen(0, 2) }
      }))
      expect(bytesAsText(loaded.state)).toEqual(bytesAsText({
        promised: { round: 3, node: 2 },
        proposerRound: 4,
        // accepted entries at or above the chosen prefix (2)
        accepted: [
          { instance: 2, ballot: { round: 2, node: 1 }, value: value(2, "d") },
          { instance: 5, ballot: { round: 3, node: 2 }, value: value(5, "e") }
        ],
        // memory window 1: instance 1, then everything beyond the gap
        chosen: [{ instance: 1, value: value(1, "b", "c") }, { instance: 4, value: value(4) }],
        chosenUpTo: 2
      }))
      expect(loaded.range.map((e) => e.instance)).toEqual([0, 1])
      expect(Buffer.from(loaded.range[1]!.value.values[1]!).toString()).toBe("c")
    }))

  it.effect("accepted values below the chosen-prefix hint load as chosen; one stored copy each", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const b = { round: 1, node: 1 }
      yield* Effect.scoped(Effect.gen(function*() {
        const s = yield* PaxosStorage.make(dir)
        yield* s.persist([0, 1, 2].map((i) => ({ _tag: "Accepted" as const, instance: i, ballot: b, value: value(i, `v${i}`) })))
        // Instances 0..2 learned chosen (nothing written for them); the hint rides on the next write.
        yield* s.persist([{ _tag: "Accepted", instance: 3, ballot: b, value: value(3, "v3") }], 3)
      }))
      const state = yield* Effect.scoped(Effect.flatMap(PaxosStorage.make(dir), (s) => s.load(2)))
      expect(state.chosenUpTo).toBe(3)
      expect(state.chosen.map((c) => c.instance)).toEqual([1, 2])
      expect(state.accepted.map((a) => a.instance)).toEqual([3])
      // A byte bound keeps only the newest value of the window.
      const small = yield* Effect.scoped(Effect.flatMap(PaxosStorage.make(dir), (s) => s.load(10, 1)))
      expect(small.chosen.map((c) => c.instance)).toEqual([2])
    }))

  it.effect("an empty directory loads as the initial state", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const state = yield* PaxosStorage.make(dir).pipe(Effect.flatMap((s) => s.load(10)))
      expect(state).toEqual({ promised: { round: 0, node: 0 }, proposerRound: 0, accepted: [], chosen: [], chosenUpTo: 0 })
    }))
})
