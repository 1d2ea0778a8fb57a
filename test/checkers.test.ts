import { describe, expect, it } from "@effect/vitest"
import { type AppendKey, type AppendOp, checkAppend } from "../src/domain/checkers/append.js"
import { type BankOp, checkBank } from "../src/domain/checkers/bank.js"
import { type RegisterOp, type RegisterValue, checkRegister } from "../src/domain/checkers/register.js"
import type { Op, OpStatus } from "../src/domain/checkers/history.js"

/** An op; info ops get completeMs Infinity, as the recorder writes them. */
const op = <I, O>(process: number, invokeMs: number, completeMs: number, status: OpStatus, input: I, output?: O): Op<I, O> => ({
  process,
  invokeMs,
  completeMs: status === "info" ? Infinity : completeMs,
  status,
  input,
  ...(output === undefined ? {} : { output })
})

// Bank
const transfer = (p: number, t0: number, t1: number, status: OpStatus, from: number, to: number, amount: number): BankOp =>
  op(p, t0, t1, status, { type: "transfer" as const, from, to, amount })
const bankRead = (p: number, t0: number, t1: number, balances: ReadonlyArray<number>): BankOp => op(p, t0, t1, "ok", { type: "read" as const }, balances)

// Append
const append = (p: number, t0: number, t1: number, status: OpStatus, key: AppendKey, value: number): AppendOp =>
  op(p, t0, t1, status, { type: "append" as const, key, value })
const listRead = (p: number, t0: number, t1: number, key: AppendKey, values: ReadonlyArray<number>): AppendOp =>
  op(p, t0, t1, "ok", { type: "read" as const, key }, values)

// Register
const write = (p: number, t0: number, t1: number, status: OpStatus, value: RegisterValue): RegisterOp =>
  op(p, t0, t1, status, { type: "write" as const, value })
const read = (p: number, t0: number, t1: number, value: RegisterValue): RegisterOp => op(p, t0, t1, "ok", { type: "read" as const }, value)
const cas = (p: number, t0: number, t1: number, status: OpStatus, from: RegisterValue, to: RegisterValue, swapped?: boolean): RegisterOp =>
  op(p, t0, t1, status, { type: "cas" as const, from, to }, swapped)

describe("bank checker", () => {
  const initial = [10, 10, 10]

  it("accepts concurrent transfers and consistent reads", () => {
    const history = [
      transfer(1, 0, 10, "ok", 0, 1, 3),
      transfer(2, 5, 15, "ok", 1, 2, 4),
      bankRead(3, 12, 14, [7, 13, 10]),
      transfer(1, 20, 25, "fail", 2, 0, 9),
      bankRead(3, 30, 31, [7, 9, 14])
    ]
    const r = checkBank({ initial, final: [7, 9, 14], history })
    expect(r).toEqual({ valid: true, anomalies: [], lostAckedWrites: 0, readsChecked: 2, exact: true })
  })

  it("flags a read with the wrong total, and a negative balance", () => {
    const r = checkBank({ initial, final: [10, 10, 10], history: [bankRead(1, 0, 1, [10, 10, 9]), bankRead(2, 2, 3, [-1, 21, 10])] })
    expect(r.valid).toBe(false)
    expect(r.readsChecked).toBe(2)
    expect(r.anomalies[0]).toMatch(/read #0 p1 read \[ok 0\.\.1ms\] sums to 29, expected the fixed total 30/)
    expect(r.anomalies[1]).toMatch(/#1 .*negative balance -1 in account 0/)
    expect(checkBank({ initial, final: [10, 10, 10], history: [bankRead(2, 2, 3, [-1, 21, 10])], allowNegative: true }).valid).toBe(true)
  })

  it("flags a final state missing an acknowledged transfer", () => {
    const history = [transfer(1, 0, 10, "ok", 0, 1, 3), transfer(2, 0, 10, "ok", 1, 2, 5)]
    // The second transfer is lost: accounts 1 and 2 do not match.
    const r = checkBank({ initial, final: [7, 13, 10], history })
    expect(r.valid).toBe(false)
    expect(r.lostAckedWrites).toBe(2)
    expect(r.anomalies[0]).toMatch(/final balance of account 1 is 13, expected 8: .*ok transfers touching it \(#0, #1\)/)
    expect(r.anomalies[1]).toMatch(/account 2 is 10, expected 15/)
  })

  it("flags a final state with a failed transfer applied", () => {
    const r = checkBank({ initial, final: [5, 15, 10], history: [transfer(1, 0, 10, "fail", 0, 1, 5)] })
    expect(r.valid).toBe(false)
    expect(r.lostAckedWrites).toBe(2)
  })

  it("accepts info transfers that did or did not apply", () => {
    const history = [
      transfer(1, 0, 10, "ok", 0, 1, 3),
      transfer(2, 1, 0, "info", 1, 2, 4),
      transfer(3, 2, 0, "info", 2, 0, 1),
      bankRead(4, 20, 21, [7, 13, 10])
    ]
    for (const final of [
      [7, 13, 10], // neither
      [7, 9, 14], // the first
      [8, 13, 9], // the second
      [8, 9, 13] // both
    ]) {
      const r = checkBank({ initial, final, history })
      expect(r.anomalies).toEqual([])
      expect(r.valid).toBe(true)
    }
    // No subset gives this: 1 moved 1 -> 2, which no transfer does.
    const bad = checkBank({ initial, final: [7, 12, 11], history })
    expect(bad.valid).toBe(false)
    expect(bad.anomalies.join("\n")).toMatch(/no subset of the 2 info transfers/)
  })

  it("falls back to a range check with more than 20 info transfers", () => {
    const infos = Array.from({ length: 25 }, (_, i) => transfer(i, i, 0, "info", i % 3, (i + 1) % 3, 1))
    const applied = [3, 9, 14, 20, 24]
    const final = [...initial]
    for (const i of applied) {
      final[i % 3] -= 1
      final[(i + 1) % 3] += 1
    }
    const r = checkBank({ initial, final, history: infos })
    expect(r).toMatchObject({ valid: true, exact: false })
    // 9 info transfers take from account 0, at most 9 out.
    const bad = checkBank({ initial, final: [0, 19, 11], history: infos })
    expect(bad).toMatchObject({ valid: false, exact: false, lostAckedWrites: 1 })
    expect(bad.anomalies[0]).toMatch(/account 0 is 0: .* difference -10 is outside \[-9, 8\]/)
  })
})

describe("append checker", () => {
  it("accepts a valid concurrent history", () => {
    const history = [
      append(1, 0, 10, "ok", "a", 1),
      append(2, 5, 12, "ok", "a", 2),
      listRead(3, 6, 8, "a", [1]),
      append(1, 15, 20, "info", "a", 3),
      append(2, 15, 20, "fail", "a", 4),
      listRead(3, 21, 22, "a", [1, 2, 3]),
      append(1, 25, 30, "info", "b", 5),
      listRead(3, 31, 32, "b", [])
    ]
    const final = new Map<AppendKey, ReadonlyArray<number>>([["a", [1, 2, 3]], ["b", []]])
    expect(checkAppend({ history, final })).toEqual({ valid: true, anomalies: [], lostAckedWrites: 0, readsChecked: 3 })
  })

  it("flags a lost acknowledged append", () => {
    const history = [append(1, 0, 10, "ok", "a", 1), append(2, 0, 10, "ok", "a", 2)]
    const r = checkAppend({ history, final: new Map([["a", [2]]]) })
    expect(r).toMatchObject({ valid: false, lostAckedWrites: 1 })
    expect(r.anomalies).toEqual([expect.stringMatching(/lost acknowledged write: #0 p1 append "a" 1 \[ok 0\.\.10ms\] is missing/)])
  })

  it("flags a duplicated value", () => {
    const history = [append(1, 0, 10, "ok", "a", 1), append(2, 0, 10, "ok", "a", 2), listRead(3, 11, 12, "a", [1, 1, 2])]
    const r = checkAppend({ history, final: new Map([["a", [1, 2]]]) })
    expect(r.valid).toBe(false)
    expect(r.anomalies[0]).toMatch(/read #2 .* contains value 1 twice \(positions 0 and 1\)/)
  })

  it("flags a read that is not a prefix of the final list", () => {
    const history = [append(1, 0, 10, "ok", "a", 1), append(2, 0, 10, "ok", "a", 2), listRead(3, 5, 6, "a", [2])]
    const r = checkAppend({ history, final: new Map([["a", [1, 2]]]) })
    expect(r.valid).toBe(false)
    expect(r.anomalies).toEqual([expect.stringMatching(/read #2 .* is not a prefix of the final list: it has 2 at position 0 where the final list has 1/)])
  })

  it("flags a real-time order violation", () => {
    const history = [append(1, 0, 10, "ok", "a", 1), append(2, 11, 20, "ok", "a", 2)]
    const r = checkAppend({ history, final: new Map([["a", [2, 1]]]) })
    expect(r.valid).toBe(false)
    expect(r.anomalies).toEqual([
      expect.stringMatching(/real-time order violated on key "a": #0 .* completed before #1 .* was invoked, but the final list has 2 at position 0 before 1 at position 1/)
    ])
    // Touching at the same ms is concurrent: either order is fine.
    expect(checkAppend({ history: [append(1, 0, 10, "ok", "a", 1), append(2, 10, 20, "ok", "a", 2)], final: new Map([["a", [2, 1]]]) }).valid).toBe(true)
  })

  it("flags stale reads", () => {
    const history = [
      append(1, 0, 10, "ok", "a", 1),
      listRead(2, 11, 12, "a", []), // misses an acked append
      append(1, 20, 0, "info", "a", 2),
      listRead(2, 30, 31, "a", [1, 2]),
      listRead(3, 32, 33, "a", [1]) // saw less than a read that completed before it
    ]
    const r = checkAppend({ history, final: new Map([["a", [1, 2]]]) })
    expect(r.valid).toBe(false)
    expect(r.anomalies).toEqual([
      expect.stringMatching(/stale read: #1 .* misses appends acknowledged before it was invoked: #0/),
      expect.stringMatching(/stale read: #4 .* returned 1 values, but #3 .* had already seen 2/)
    ])
  })

  it("flags values never appended, failed, or from the future", () => {
    const history = [append(1, 0, 10, "fail", "a", 1), listRead(2, 11, 12, "a", [1, 7]), append(1, 20, 30, "ok", "a", 3), listRead(2, 13, 14, "a", [1, 7, 3])]
    const r = checkAppend({ history, final: new Map([["a", [1, 7, 3]]]) })
    expect(r.valid).toBe(false)
    const text = r.anomalies.join("\n")
    expect(text).toMatch(/final read of key "a" contains value 1 of the failed append #0/)
    expect(text).toMatch(/final read of key "a" contains value 7, which was never appended/)
    expect(text).toMatch(/read #3 .* contains value 3 of #2 .* invoked after the read completed/)
  })
})

describe("register checker", () => {
  it("rejects a read of the old value after a write completed", () => {
    const r = checkRegister([write(1, 0, 10, "ok", 1), read(2, 20, 30, 0)], { initial: 0 })
    expect(r.valid).toBe(false)
    expect(r.anomalies).toEqual([
      expect.stringMatching(/not linearizable: #1 p2 read -> 0 \[ok 20\.\.30ms\] cannot take effect before it completes.*#0 p1 write 1 .*leaving the register at 1/)
    ])
  })

  it("accepts overlapping ops in either order", () => {
    expect(checkRegister([write(1, 0, 10, "ok", 1), read(2, 5, 15, 0)], { initial: 0 }).valid).toBe(true)
    expect(checkRegister([write(1, 0, 10, "ok", 1), read(2, 5, 15, 1)], { initial: 0 }).valid).toBe(true)
    // Two reads overlapping a write may see new then old only if they overlap each other too.
    const h = [write(1, 0, 100, "ok", 1), read(2, 10, 20, 1), read(3, 30, 40, 0)]
    expect(checkRegister(h, { initial: 0 }).valid).toBe(false)
    expect(checkRegister([write(1, 0, 100, "ok", 1), read(2, 10, 35, 1), read(3, 30, 40, 0)], { initial: 0 }).valid).toBe(true)
  })

  it("lets an info write take effect any time after its invoke, once", () => {
    expect(checkRegister([write(1, 0, 0, "info", 2), read(2, 50, 60, 2)], { initial: 0 }).valid).toBe(true)
    expect(checkRegister([write(1, 0, 0, "info", 2), read(2, 50, 60, 0), read(2, 70, 80, 2)], { initial: 0 }).valid).toBe(true)
    // Not before its invoke, and not undone.
    expect(checkRegister([read(2, 0, 10, 2), write(1, 20, 0, "info", 2)], { initial: 0 }).valid).toBe(false)
    expect(checkRegister([write(1, 0, 5, "ok", 1), write(2, 6, 0, "info", 2), read(3, 10, 11, 2), read(3, 12, 13, 1)]).valid).toBe(false)
    // A failed write never happened.
    expect(checkRegister([write(1, 0, 10, "fail", 2), read(2, 50, 60, 2)], { initial: 0 }).valid).toBe(false)
  })

  it("checks compare-and-set", () => {
    const ok = [
      write(1, 0, 10, "ok", 1),
      cas(2, 11, 20, "ok", 1, 2, true),
      cas(3, 15, 25, "ok", 1, 3, false), // overlaps the swap: must come after it
      read(1, 30, 31, 2),
      cas(2, 32, 0, "info", 2, 4),
      read(3, 40, 41, 4),
      cas(1, 42, 50, "fail", 4, 5),
      read(2, 51, 52, 4)
    ]
    expect(checkRegister(ok, { initial: 0 })).toMatchObject({ valid: true, anomalies: [] })
    const bad = [write(1, 0, 10, "ok", 1), cas(2, 11, 20, "ok", 0, 2, true)]
    const r = checkRegister(bad, { initial: 0 })
    expect(r.valid).toBe(false)
    expect(r.anomalies[0]).toMatch(/#1 p2 cas 0->2 -> true .* cannot take effect/)
    expect(checkRegister([write(1, 0, 10, "ok", 1), cas(2, 11, 20, "ok", 1, 2, false)], { initial: 0 }).valid).toBe(false)
  })

  it("returns unknown when the search bound is hit", () => {
    const h = Array.from({ length: 12 }, (_, i) => write(i, 0, 100, "ok", i)).concat([read(99, 0, 100, 42)])
    const r = checkRegister(h, { initial: 0, maxExplored: 50 })
    expect(r).toMatchObject({ valid: "unknown", explored: 50 })
    expect(checkRegister(h, { initial: 0 }).valid).toBe(false)
  })
})

/** mulberry32: small seeded PRNG, so a failing history can be replayed from its seed. */
const prng = (seed: number) => {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

describe("randomized sequential histories are valid", () => {
  // CHECKER_SEED=n replays a run; otherwise each run explores new seeds.
  const baseSeed = Number(process.env.CHECKER_SEED ?? Math.floor(Math.random() * 2 ** 31))
  const runs = 200
  const status = (rnd: () => number): OpStatus => {
    const x = rnd()
    return x < 0.7 ? "ok" : x < 0.85 ? "fail" : "info"
  }

  it("bank", () => {
    for (let run = 0; run < runs; run++) {
      const seed = baseSeed + run
      const rnd = prng(seed)
      const n = 2 + Math.floor(rnd() * 4)
      const initial = Array.from({ length: n }, () => Math.floor(rnd() * 20))
      const state = [...initial]
      const history: Array<BankOp> = []
      const ops = Math.floor(rnd() * 60)
      let t = 0
      for (let i = 0; i < ops; i++) {
        const t0 = t
        t += 1 + Math.floor(rnd() * 5)
        if (rnd() < 0.3) {
          history.push(bankRead(0, t0, t, [...state]))
        } else {
          const from = Math.floor(rnd() * n)
          const to = Math.floor(rnd() * n)
          // Like the workload: a transfer that would overdraw rolls back (fail).
          const amount = 1 + Math.floor(rnd() * 5)
          let s = status(rnd)
          if (state[from] < amount && s !== "fail") s = "fail"
          if (s === "ok" || (s === "info" && rnd() < 0.5)) {
            state[from] -= amount
            state[to] += amount
          }
          history.push(transfer(i % 5, t0, t, s, from, to, amount))
        }
        t++
      }
      const r = checkBank({ initial, final: state, history })
      expect(r.anomalies, `seed ${seed}`).toEqual([])
      expect(r.valid, `seed ${seed}`).toBe(true)
    }
  })

  it("append", () => {
    for (let run = 0; run < runs; run++) {
      const seed = baseSeed + run
      const rnd = prng(seed)
      const keys = ["a", "b", "c"].slice(0, 1 + Math.floor(rnd() * 3))
      const lists = new Map<AppendKey, Array<number>>(keys.map((k) => [k, []]))
      const history: Array<AppendOp> = []
      const ops = Math.floor(rnd() * 80)
      let t = 0
      let next = 1
      for (let i = 0; i < ops; i++) {
        const key = keys[Math.floor(rnd() * keys.length)]
        const list = lists.get(key)!
        const t0 = t
        t += 1 + Math.floor(rnd() * 5)
        if (rnd() < 0.4) history.push(listRead(i % 4, t0, t, key, [...list]))
        else {
          const s = status(rnd)
          const value = next++
          if (s === "ok" || (s === "info" && rnd() < 0.5)) list.push(value)
          history.push(append(i % 4, t0, t, s, key, value))
        }
        t++
      }
      const r = checkAppend({ history, final: lists })
      expect(r.anomalies, `seed ${seed}`).toEqual([])
      expect(r.valid, `seed ${seed}`).toBe(true)
    }
  })

  it("register", () => {
    for (let run = 0; run < runs; run++) {
      const seed = baseSeed + run
      const rnd = prng(seed)
      let value: RegisterValue = 0
      const history: Array<RegisterOp> = []
      const ops = Math.floor(rnd() * 30)
      let t = 0
      for (let i = 0; i < ops; i++) {
        const t0 = t
        t += 1 + Math.floor(rnd() * 5)
        const kind = rnd()
        const v = Math.floor(rnd() * 4)
        if (kind < 0.35) history.push(read(i % 3, t0, t, value))
        else if (kind < 0.7) {
          const s = status(rnd)
          if (s === "ok" || (s === "info" && rnd() < 0.5)) value = v
          history.push(write(i % 3, t0, t, s, v))
        } else {
          const from = Math.floor(rnd() * 4)
          const s = status(rnd)
          const swapped = value === from
          if (swapped && (s === "ok" || (s === "info" && rnd() < 0.5))) value = v
          history.push(cas(i % 3, t0, t, s, from, v, s === "ok" ? swapped : undefined))
        }
        t++
      }
      const r = checkRegister(history, { initial: 0 })
      expect(r.anomalies, `seed ${seed}`).toEqual([])
      expect(r.valid, `seed ${seed}`).toBe(true)
    }
  })
})
