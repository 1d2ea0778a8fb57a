import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { open as openLmdb } from "lmdb"
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import type { PersistRecord } from "../src/domain/paxos/core.js"
import type { PaxosValue } from "../src/domain/paxos/messages.js"
import * as PaxosStorage from "../src/services/paxos/PaxosStorage.js"
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
        chosenUpTo: 2,
        compactedBelow: 0
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
      expect(state).toEqual({ promised: { round: 0, node: 0 }, proposerRound: 0, accepted: [], chosen: [], chosenUpTo: 0, compactedBelow: 0 })
    }))
})

describe("PaxosStorage write-ahead log", () => {
  const b = { round: 1, node: 1 }
  const accept = (i: number, text: string): PersistRecord => ({ _tag: "Accepted", instance: i, ballot: b, value: value(i, text) })
  const texts = (s: { readonly accepted: ReadonlyArray<{ readonly value: PaxosValue }> }) =>
    s.accepted.map((a) => Buffer.from(a.value.values[0]!).toString())
  const open = (dir: string, options?: PaxosStorage.PaxosStorageOptions) => PaxosStorage.make(dir, { segmentBytes: 4096, ...options })

  it.effect("rolls over small segments, gives a large write a segment of its own, and replays it all", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const big = "x".repeat(10_000)
      // Larger than the 4 MiB chunks replay reads in.
      const huge = "y".repeat(5 * 1024 * 1024)
      const text = (i: number) => (i === 20 ? big : i === 60 ? huge : `v${i}`)
      yield* Effect.scoped(Effect.gen(function*() {
        const s = yield* open(dir)
        for (let i = 0; i < 120; i++) yield* s.persist([accept(i, text(i))])
      }))
      const segments = readdirSync(join(dir, "wal")).filter((f) => f.endsWith(".wal"))
      expect(segments.length).toBeGreaterThan(3)
      const kept = yield* Effect.scoped(Effect.flatMap(open(dir), (s) => s.load(10)))
      expect(texts(kept)).toEqual(Array.from({ length: 120 }, (_, i) => text(i)))
      // Without its index the whole log is replayed, the 5 MiB frame too.
      rmSync(join(dir, "index"), { recursive: true, force: true })
      const state = yield* Effect.scoped(Effect.flatMap(open(dir), (s) => s.load(10)))
      expect(texts(state)).toEqual(Array.from({ length: 120 }, (_, i) => text(i)))
    }))

  it.effect("makes the next segment, zero-filled to its size, as soon as the first write is in", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      // Not a whole number of MiB, and more than one call's worth of zeros.
      const segmentBytes = 20 * 1024 * 1024 + 123
      // Closing waits for the segment being made.
      yield* Effect.scoped(Effect.flatMap(open(dir, { segmentBytes }), (s) => s.persist([accept(0, "a")])))
      const segments = readdirSync(join(dir, "wal")).filter((f) => f.endsWith(".wal")).sort()
      expect(segments.length).toBe(2)
      const spare = readFileSync(join(dir, "wal", segments[1]!))
      expect(spare.length).toBe(segmentBytes)
      expect(spare.every((x) => x === 0)).toBe(true)
    }))

  it.effect("a next segment left empty by a stop is made again after a restart, and what is written into it is kept", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const text = (i: number) => `${i}:${"v".repeat(300)}`
      // The next segment is made once the first 4 KiB one is in use.
      yield* Effect.scoped(Effect.gen(function*() {
        const s = yield* open(dir)
        for (let i = 0; i < 8; i++) yield* s.persist([accept(i, text(i))])
      }))
      expect(readdirSync(join(dir, "wal")).filter((f) => f.endsWith(".wal")).length).toBe(2)
      // Restarted: the replay opens the empty segment, and the writes then fill the first and
      // move on into the one made again over it.
      yield* Effect.scoped(Effect.gen(function*() {
        const s = yield* open(dir)
        yield* s.load(10)
        for (let i = 8; i < 30; i++) yield* s.persist([accept(i, text(i))])
      }))
      const state = yield* Effect.scoped(Effect.flatMap(open(dir), (s) => s.load(100)))
      expect(texts(state)).toEqual(Array.from({ length: 30 }, (_, i) => text(i)))
      // Also without the index: the values are in the segment's file itself.
      rmSync(join(dir, "index"), { recursive: true, force: true })
      const replayed = yield* Effect.scoped(Effect.flatMap(open(dir), (s) => s.load(100)))
      expect(texts(replayed)).toEqual(Array.from({ length: 30 }, (_, i) => text(i)))
    }))

  it.effect("a torn write at the end is not part of the log, and writing goes on after it", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      yield* Effect.scoped(Effect.flatMap(open(dir), (s) => s.persist([accept(0, "a"), accept(1, "b")])))
      // A crash in the middle of the next write: part of a frame (valid header, cut payload).
      const seg = join(dir, "wal", readdirSync(join(dir, "wal")).filter((f) => f.endsWith(".wal")).sort()[0]!)
      const bytes = readFileSync(seg)
      let end = 0
      while (bytes.readUInt32LE(end) !== 0) end += 8 + bytes.readUInt32LE(end)
      const torn = Buffer.from([200, 0, 0, 0, 1, 2, 3, 4, 9, 9, 9])
      const fd = openSync(seg, "r+")
      writeSync(fd, torn, 0, torn.length, end)
      closeSync(fd)
      yield* Effect.scoped(Effect.gen(function*() {
        const s = yield* open(dir)
        expect(texts(yield* s.load(10))).toEqual(["a", "b"])
        yield* s.persist([accept(2, "c")])
      }))
      const state = yield* Effect.scoped(Effect.flatMap(open(dir), (s) => s.load(10)))
      expect(texts(state)).toEqual(["a", "b", "c"])
    }))

  it.effect("an index that is gone, or was written before a reboot, is rebuilt from the log; a wrong one is refused", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const records: Array<PersistRecord> = [
        { _tag: "Promised", ballot: { round: 7, node: 2 } },
        { _tag: "ProposerRound", round: 9 },
        accept(0, "a"),
        accept(1, "b"),
        { _tag: "Chosen", instance: 2, value: value(2, "c") }
      ]
      yield* Effect.scoped(Effect.flatMap(open(dir, { bootId: "boot-1" }), (s) => s.persist(records, 1)))
      const expected = yield* Effect.scoped(Effect.flatMap(open(dir, { bootId: "boot-1" }), (s) => s.load(10)))
      expect(expected).toMatchObject({ promised: { round: 7, node: 2 }, proposerRound: 9, chosenUpTo: 1 })
      rmSync(join(dir, "index"), { recursive: true, force: true })
      const rebuilt = yield* Effect.scoped(Effect.flatMap(open(dir, { bootId: "boot-1" }), (s) => s.load(10)))
      expect(bytesAsText(rebuilt)).toEqual(bytesAsText(expected))
      // After a reboot the index may be torn (it is never synced): rebuilt as well.
      const afterReboot = yield* Effect.scoped(Effect.flatMap(open(dir, { bootId: "boot-2" }), (s) => s.load(10)))
      expect(bytesAsText(afterReboot)).toEqual(bytesAsText(expected))
      // An index pointing an instance at another one's frame fails loudly instead of serving it.
      const env = openLmdb({ path: join(dir, "index"), encoding: "msgpack", compression: false })
      const log = env.openDB("log", { encoding: "msgpack" })
      const loc0 = log.get(0) as ReadonlyArray<unknown>
      yield* Effect.promise(() => log.put(1, loc0))
      yield* Effect.promise(() => env.close())
      const wrong = yield* Effect.scoped(Effect.flatMap(open(dir, { bootId: "boot-2" }), (s) => Effect.flip(s.readChosen(1, 1))))
      expect(wrong.message).toContain("does not hold it")
    }))

  it.effect("compaction deletes old segments behind a checkpoint that keeps the promise, also across an index rebuild", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const options = { segmentBytes: 8 * 1024, bootId: "boot-1" }
      const ballot = { round: 5, node: 2 }
      const filler = "x".repeat(700)
      const members = { from: 19, voters: [1, 2, 4], learners: [5] }
      const accepted = (i: number): PersistRecord => ({ _tag: "Accepted", instance: i, ballot, value: value(i, `${i}:${filler}`) })
      const before = yield* Effect.scoped(Effect.gen(function*() {
        const s = yield* PaxosStorage.make(dir, options)
        yield* s.persist([{ _tag: "Promised", ballot }, { _tag: "ProposerRound", round: 7 }])
        for (let i = 0; i < 100; i++) {
          // A member set learned in the first segment, which compaction deletes: the checkpoint keeps it.
          yield* s.persist(i === 3 ? [accepted(i), { _tag: "Configured", config: members }] : [accepted(i)], i)
        }
        const usage = yield* s.usage
        // Nothing is deleted while the newer segments hold less than the tail to keep.
        const kept = yield* s.compact({ below: 60, retainBytes: 1 << 30, retainMs: 3_600_000 })
        expect(kept).toBe(0)
        const start = yield* s.compact({ below: 60, retainBytes: 0, retainMs: 3_600_000 })
        expect(start).toBeGreaterThan(0)
        expect(start).toBeLessThanOrEqual(60)
        const after = yield* s.usage
        expect(after.segments).toBeLessThan(usage.segments)
        expect(after.bytes).toBeLessThan(usage.bytes)
        expect(after.compactedBelow).toBe(start)
        expect(yield* s.readChosen(0, start)).toEqual([])
        expect((yield* s.readChosen(start, 3)).map((e) => e.instance)).toEqual([start, start + 1, start + 2])
        return { start, files: readdirSync(join(dir, "wal")).length }
      }))
      expect(readdirSync(join(dir, "wal")).length).toBe(before.files)
      for (const boot of ["boot-1", "boot-2"]) {
        // boot-2: the index is rebuilt from the surviving segments and the checkpoint.
        const state = yield* Effect.scoped(Effect.gen(function*() {
          const s = yield* PaxosStorage.make(dir, { ...options, bootId: boot })
          const read = yield* s.readChosen(before.start, 1)
          expect(read.map((e) => e.instance), boot).toEqual([before.start])
          return yield* s.load(4)
        }))
        expect(state.promised, boot).toEqual(ballot)
        expect(state.proposerRound, boot).toBe(7)
        expect(state.compactedBelow, boot).toBe(before.start)
        expect(state.chosenUpTo, boot).toBe(99)
        expect(state.chosen.map((c) => c.instance), boot).toEqual([95, 96, 97, 98])
        expect(state.accepted.map((a) => a.instance), boot).toEqual([99])
        expect(state.configs, boot).toEqual([members])
      }
    }))

  it.effect("a segment holding an instance the caller still needs is kept, and so is every one after it", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const s = yield* PaxosStorage.make(dir, { segmentBytes: 8 * 1024 })
      const ballot = { round: 1, node: 1 }
      const filler = "y".repeat(700)
      // Instance 500 sits in the first segment, among old ones.
      yield* s.persist([{ _tag: "Accepted", instance: 500, ballot, value: value(500, filler) }])
      for (let i = 0; i < 60; i++) yield* s.persist([{ _tag: "Accepted", instance: i, ballot, value: value(i, filler) }], i)
      expect(yield* s.compact({ below: 50, retainBytes: 0, retainMs: 0 })).toBe(0)
      expect((yield* s.readChosen(0, 1)).map((e) => e.instance)).toEqual([0])
    }))

  it.effect("an Installed record moves the start and the chosen prefix", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      yield* Effect.scoped(Effect.gen(function*() {
        const s = yield* PaxosStorage.make(dir)
        const ballot = { round: 1, node: 1 }
        yield* s.persist([0, 1, 2].map((i) => ({ _tag: "Accepted" as const, instance: i, ballot, value: value(i, "v") })))
        yield* s.persist([{ _tag: "Configured", config: { from: 20, voters: [1, 2, 3], learners: [] } }])
        // The installed state brings the member sets from its point on, replacing those known.
        yield* s.persist([
          { _tag: "Installed", upTo: 40, configs: [{ from: 30, voters: [2, 3, 4], learners: [] }] },
          { _tag: "Accepted", instance: 41, ballot, value: value(41, "w") }
        ])
      }))
      const state = yield* Effect.scoped(Effect.flatMap(PaxosStorage.make(dir), (s) => s.load(10)))
      expect(state.chosenUpTo).toBe(40)
      expect(state.compactedBelow).toBe(40)
      expect(state.chosen).toEqual([])
      expect(state.accepted.map((a) => a.instance)).toEqual([41])
      expect(state.configs).toEqual([{ from: 30, voters: [2, 3, 4], learners: [] }])
    }))
})
