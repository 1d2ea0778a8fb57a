/**
 * Bank workload checker: N accounts with a fixed total; transfers move money between two
 * accounts in one transaction, reads see every balance in one transaction. Snapshot isolation
 * or better keeps every read's total fixed; durability makes the final balances equal to the
 * initial ones plus every acknowledged transfer plus some subset of the indeterminate ones.
 */
import { type Op, listIndices, malformed, opLabel } from "./history.js"

export type BankInput =
  | { readonly type: "transfer"; readonly from: number; readonly to: number; readonly amount: number }
  | { readonly type: "read" }

/** A read's output: the balance of every account, by account number. */
export type BankOp = Op<BankInput, ReadonlyArray<number>>

export interface BankCheckInput {
  /** Balances before the run; their sum is the fixed total. */
  readonly initial: ReadonlyArray<number>
  /** Balances read after recovery: authoritative. */
  readonly final: ReadonlyArray<number>
  readonly history: ReadonlyArray<BankOp>
  /** Whether a balance may go below zero (default false). */
  readonly allowNegative?: boolean
  /** Up to this many info transfers the final state is checked exactly (default 20: 2^20 subsets). */
  readonly maxExactInfo?: number
}

export interface BankResult {
  readonly valid: boolean
  readonly anomalies: ReadonlyArray<string>
  /** Accounts whose final balance no subset of info transfers explains (1 per account). */
  readonly lostAckedWrites: number
  readonly readsChecked: number
  /** False when too many info transfers forced the necessary-condition (range) check. */
  readonly exact: boolean
}

type Transfer = { readonly index: number; readonly from: number; readonly to: number; readonly amount: number }

const sum = (xs: ReadonlyArray<number>): number => xs.reduce((a, b) => a + b, 0)

const describe = (input: BankInput): string =>
  input.type === "transfer" ? `transfer ${input.from}->${input.to} ${input.amount}` : "read"

/** Why balances are not a well-formed vector of n accounts, or undefined. */
const badBalances = (xs: unknown, n: number): string | undefined =>
  !Array.isArray(xs)
    ? "no balances"
    : xs.length !== n
      ? `${xs.length} balances for ${n} accounts`
      : xs.some((x) => typeof x !== "number" || !Number.isFinite(x))
        ? "a balance is not a finite number"
        : undefined

export const checkBank = (input: BankCheckInput): BankResult => {
  const { initial, final, history } = input
  const allowNegative = input.allowNegative ?? false
  // Capped at 30: the subset walk indexes subsets with 32-bit integers.
  const maxExactInfo = Math.min(input.maxExactInfo ?? 20, 30)
  const n = initial.length
  const total = sum(initial)
  const anomalies: Array<string> = []
  const ok: Array<Transfer> = []
  const info: Array<Transfer> = []
  let readsChecked = 0

  history.forEach((op, index) => {
    const label = () => opLabel(index, op, describe(op.input))
    const why = malformed(op)
    if (why !== undefined) {
      anomalies.push(`malformed op ${label()}: ${why}`)
      return
    }
    if (op.input.type === "transfer") {
      const { from, to, amount } = op.input
      const inRange = (a: number) => Number.isInteger(a) && a >= 0 && a < n
      if (!inRange(from) || !inRange(to) || !Number.isFinite(amount)) {
        anomalies.push(`malformed op ${label()}: accounts must be 0..${n - 1} and the amount finite`)
        return
      }
      // fail transfers never applied: they take no part in the final-state check.
      if (op.status === "ok") ok.push({ index, from, to, amount })
      else if (op.status === "info") info.push({ index, from, to, amount })
      return
    }
    // Only acknowledged reads observed a state; the others say nothing.
    if (op.status !== "ok") return
    readsChecked++
    const bad = badBalances(op.output, n)
    if (bad !== undefined) {
      anomalies.push(`read ${label()}: ${bad}`)
      return
    }
    const balances = op.output as ReadonlyArray<number>
    const got = sum(balances)
    if (got !== total) anomalies.push(`read ${label()} sums to ${got}, expected the fixed total ${total}: ${JSON.stringify(balances)}`)
    if (!allowNegative) {
      balances.forEach((b, account) => {
        if (b < 0) anomalies.push(`read ${label()} sees a negative balance ${b} in account ${account}`)
      })
    }
  })

  const finalBad = badBalances(final, n)
  if (finalBad !== undefined) {
    anomalies.push(`final read: ${finalBad}`)
    return { valid: false, anomalies, lostAckedWrites: 0, readsChecked, exact: true }
  }
  const finalTotal = sum(final)
  if (finalTotal !== total) anomalies.push(`final balances sum to ${finalTotal}, expected the fixed total ${total}: ${JSON.stringify(final)}`)
  if (!allowNegative) {
    final.forEach((b, account) => {
      if (b < 0) anomalies.push(`final read sees a negative balance ${b} in account ${account}`)
    })
  }

  // Transfers commute, so only the multiset applied matters: base is what the acked ones give.
  const base = [...initial]
  for (const t of ok) {
    base[t.from] -= t.amount
    base[t.to] += t.amount
  }
  const okTouching = (a: number) => ok.filter((t) => t.from === a || t.to === a).map((t) => t.index)
  const infoTouching = (a: number) => info.filter((t) => t.from === a || t.to === a).map((t) => t.index)

  let lostAckedWrites = 0
  const exact = info.length <= maxExactInfo
  if (exact) {
    const best = closestSubset(base, final, info)
    lostAckedWrites = best.mismatches.length
    const applied = info.filter((_, i) => best.chosen[i]).map((t) => t.index)
    for (const a of best.mismatches) {
      anomalies.push(
        `final balance of account ${a} is ${final[a]}, expected ${best.balances[a]}: initial ${initial[a]}` +
          ` + ok transfers touching it (${listIndices(okTouching(a))})` +
          ` + the info transfers of the closest explanation (${listIndices(applied)});` +
          ` no subset of the ${info.length} info transfers (${listIndices(infoTouching(a))} touch it) explains it:` +
          ` an acknowledged transfer was lost or an unacknowledged one applied`
      )
    }
  } else {
    // Necessary condition only: each account's difference within what info deltas can reach.
    const lo = new Array<number>(n).fill(0)
    const hi = new Array<number>(n).fill(0)
    for (const t of info) {
      for (const [a, d] of [[t.from, -t.amount], [t.to, t.amount]] as const) {
        if (d < 0) lo[a] += d
        else hi[a] += d
      }
    }
    for (let a = 0; a < n; a++) {
      const diff = final[a] - base[a]
      if (diff < lo[a] || diff > hi[a]) {
        lostAckedWrites++
        anomalies.push(
          `final balance of account ${a} is ${final[a]}: initial ${initial[a]} + ok transfers touching it` +
            ` (${listIndices(okTouching(a))}) give ${base[a]}, and the difference ${diff} is outside` +
            ` [${lo[a]}, ${hi[a]}] reachable with info transfers (${listIndices(infoTouching(a))})` +
            ` (range check only: ${info.length} info transfers): an acknowledged transfer was lost or an unacknowledged one applied`
        )
      }
    }
  }

  return { valid: anomalies.length === 0, anomalies, lostAckedWrites, readsChecked, exact }
}

/**
 * The subset of info transfers whose application to base leaves the fewest accounts differing
 * from final. Walks all 2^k subsets in Gray-code order: each step toggles one transfer, so it
 * costs O(1) and stops at the first exact explanation.
 */
const closestSubset = (
  base: ReadonlyArray<number>,
  final: ReadonlyArray<number>,
  info: ReadonlyArray<Transfer>
): { readonly chosen: ReadonlyArray<boolean>; readonly balances: ReadonlyArray<number>; readonly mismatches: ReadonlyArray<number> } => {
  const cur = [...base]
  const chosen = info.map(() => false)
  let mismatches = cur.reduce((m, b, a) => m + (b === final[a] ? 0 : 1), 0)
  let best = { count: mismatches, chosen: [...chosen], balances: [...cur] }
  const move = (a: number, d: number) => {
    const before = cur[a] === final[a]
    cur[a] += d
    const after = cur[a] === final[a]
    if (before !== after) mismatches += after ? -1 : 1
  }
  const steps = 2 ** info.length
  for (let step = 1; step < steps && best.count > 0; step++) {
    // The bit that changes between Gray codes step-1 and step is the lowest set bit of step.
    const bit = 31 - Math.clz32(step & -step)
    const t = info[bit]
    const sign = chosen[bit] ? -1 : 1
    chosen[bit] = !chosen[bit]
    move(t.from, -sign * t.amount)
    move(t.to, sign * t.amount)
    if (mismatches < best.count) best = { count: mismatches, chosen: [...chosen], balances: [...cur] }
  }
  const out: Array<number> = []
  best.balances.forEach((b, a) => {
    if (b !== final[a]) out.push(a)
  })
  return { chosen: best.chosen, balances: best.balances, mismatches: out }
}
