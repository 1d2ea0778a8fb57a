import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import * as BinlogSource from "../src/services/binlog/BinlogSource.js"

const txn = (seq: number) => ({ gtid: { domain: 0, server: 1, seq }, events: [new Uint8Array([seq])] })

describe("in-memory binlog source", () => {
  it.live("serves history after a position, then new transactions; refuses positions it cannot serve", () =>
    Effect.gen(function*() {
      const { source, append } = yield* BinlogSource.makeInMemory(new Uint8Array([0]))
      for (const seq of [5, 6, 7]) yield* append(txn(seq))
      // The first n transactions a cursor gives, pulled as a binlog server does.
      const seqs = (cursor: BinlogSource.BinlogCursor, n: number) =>
        Effect.gen(function*() {
          const out: Array<number> = []
          while (out.length < n) for (const t of yield* cursor.next(1_000)) out.push(t.gtid.seq)
          return out.slice(0, n)
        })

      expect(yield* seqs(yield* source.after(null), 3)).toEqual([5, 6, 7])
      expect(yield* seqs(yield* source.after({ domain: 0, server: 1, seq: 4 }), 3)).toEqual([5, 6, 7])
      const live = yield* Effect.forkChild(seqs(yield* source.after({ domain: 0, server: 9, seq: 6 }), 2))
      yield* append(txn(8))
      expect(yield* Fiber.join(live)).toEqual([7, 8])

      const refused = (seq: number, domain = 0) => Effect.flip(source.after({ domain, server: 1, seq }))
      expect(yield* refused(9)).toMatchObject({ _tag: "UnknownPosition", reason: "ahead" })
      expect(yield* refused(2)).toMatchObject({ _tag: "UnknownPosition", reason: "purged" })
      expect(yield* refused(7, 3)).toMatchObject({ _tag: "UnknownPosition", reason: "other-domain" })
      expect((yield* refused(9)).message).toContain("ahead of the cluster's log")
      // Nothing new within the wait: an empty answer (the server sends a heartbeat).
      const idle = yield* source.after({ domain: 0, server: 1, seq: 8 })
      expect(yield* idle.next(50)).toEqual([])
    }))
})
