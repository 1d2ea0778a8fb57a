/**
 * List-append workload checker: each key is a list that only grows; appends carry globally
 * unique values, so every value observed names the one append that wrote it. Appends to one
 * key are totally ordered (the final list is that order), every read is a prefix of it, and
 * real-time order is respected: what was acknowledged or observed before an op started is
 * visible to it.
 */
import { type Op, listIndices, malformed, opLabel, showList } from "./history.js"

export type AppendKey = string | number

export type AppendInput =
  | { readonly type: "append"; readonly key: AppendKey; readonly value: number }
  | { readonly type: "read"; readonly key: AppendKey }

/** A read's output: the key's values in list order. */
export type AppendOp = Op<AppendInput, ReadonlyArray<number>>

export interface AppendCheckInput {
  readonly history: ReadonlyArray<AppendOp>
  /** The list of every key, read after recovery: authoritative. */
  readonly final: ReadonlyMap<AppendKey, ReadonlyArray<number>>
}

export interface AppendResult {
  readonly valid: boolean
  readonly anomalies: ReadonlyArray<string>
  /** ok appends whose value is missing from the final list of their key. */
  readonly lostAckedWrites: number
  readonly readsChecked: number
}

type Append = { readonly index: number; readonly op: AppendOp; readonly key: AppendKey; readonly value: number }
type Read = { readonly index: number; readonly op: AppendOp; readonly values: ReadonlyArray<number> }

const describe = (input: AppendInput): string =>
  input.type === "append" ? `append ${JSON.stringify(input.key)} ${input.value}` : `read ${JSON.stringify(input.key)}`

/** Ops sorted by a time with a running maximum of some position, for "everything before t" queries. */
const prefixMax = <T>(items: ReadonlyArray<T>, time: (t: T) => number, pos: (t: T) => number) => {
  const sorted = [...items].sort((a, b) => time(a) - time(b))
  const times = sorted.map(time)
  const best: Array<{ readonly pos: number; readonly item: T }> = []
  for (const item of sorted) {
    const prev = best[best.length - 1]
    best.push(prev === undefined || pos(item) > prev.pos ? { pos: pos(item), item } : prev)
  }
  /** The item of greatest position among those with time strictly before t. */
  return (t: number): { readonly pos: number; readonly item: T } | undefined => {
    let lo = 0
    let hi = times.length
    while (lo < hi) {
      const mid = (lo + hi) >> 1
      if (times[mid] < t) lo = mid + 1
      else hi = mid
    }
    return lo === 0 ? undefined : best[lo - 1]
  }
}

export const checkAppend = (input: AppendCheckInput): AppendResult => {
  const { history, final } = input
  const anomalies: Array<string> = []
  const label = (index: number) => opLabel(index, history[index], describe(history[index].input))
  const appendsByValue = new Map<number, Append>()
  const appendsByKey = new Map<AppendKey, Array<Append>>()
  const readsByKey = new Map<AppendKey, Array<Read>>()
  const keys = new Set<AppendKey>(final.keys())
  let readsChecked = 0

  history.forEach((op, index) => {
    const why = malformed(op)
    if (why !== undefined) {
      anomalies.push(`malformed op ${label(index)}: ${why}`)
      return
    }
    const key = op.input.key
    keys.add(key)
    if (op.input.type === "append") {
      const a: Append = { index, op, key, value: op.input.value }
      const dup = appendsByValue.get(a.value)
      if (dup !== undefined) {
        anomalies.push(`malformed history: value ${a.value} appended twice (${label(dup.index)} and ${label(index)}); values must be unique`)
        return
      }
      appendsByValue.set(a.value, a)
      appendsByKey.set(key, [...(appendsByKey.get(key) ?? []), a])
      return
    }
    if (op.status !== "ok") return
    readsChecked++
    if (!Array.isArray(op.output) || op.output.some((v) => typeof v !== "number")) {
      anomalies.push(`read ${label(index)}: output is not a list of numbers`)
      return
    }
    readsByKey.set(key, [...(readsByKey.get(key) ?? []), { index, op, values: op.output }])
  })

  let lostAckedWrites = 0
  for (const key of keys) {
    const k = JSON.stringify(key)
    const appends = appendsByKey.get(key) ?? []
    const reads = readsByKey.get(key) ?? []
    const fin = final.get(key)
    if (fin === undefined) {
      if (appends.length > 0 || reads.length > 0) anomalies.push(`no final read of key ${k}: its history cannot be checked`)
      continue
    }

    // (b) no duplicates, (c) only values appended (and not failed) to this key, not from the future.
    const checkValues = (values: ReadonlyArray<number>, what: string, read: Read | undefined) => {
      const seen = new Map<number, number>()
      values.forEach((v, pos) => {
        const first = seen.get(v)
        if (first !== undefined) {
          anomalies.push(`${what} of key ${k} contains value ${v} twice (positions ${first} and ${pos}): ${showList(values)}`)
          return
        }
        seen.set(v, pos)
        const a = appendsByValue.get(v)
        if (a === undefined) anomalies.push(`${what} of key ${k} contains value ${v}, which was never appended`)
        else if (a.key !== key) anomalies.push(`${what} of key ${k} contains value ${v}, appended to key ${JSON.stringify(a.key)} by ${label(a.index)}`)
        else if (a.op.status === "fail") anomalies.push(`${what} of key ${k} contains value ${v} of the failed append ${label(a.index)}`)
        else if (read !== undefined && a.op.invokeMs > read.op.completeMs)
          anomalies.push(`${what} of key ${k} contains value ${v} of ${label(a.index)}, invoked after the read completed`)
      })
    }
    checkValues(fin, "final read", undefined)
    for (const r of reads) checkValues(r.values, `read ${label(r.index)}`, r)

    const finalPos = new Map<number, number>()
    fin.forEach((v, pos) => {
      if (!finalPos.has(v)) finalPos.set(v, pos)
    })

    // (a) every acknowledged append survives in the final list.
    for (const a of appends) {
      if (a.op.status === "ok" && !finalPos.has(a.value)) {
        lostAckedWrites++
        anomalies.push(`lost acknowledged write: ${label(a.index)} is missing from the final list of key ${k} ${showList(fin)}`)
      }
    }

    // (d) lists only grow and appends are totally ordered: every read is a prefix of the final list.
    const prefixes: Array<Read> = []
    const isPrefix = new Set<Read>()
    for (const r of reads) {
      const diverge = r.values.findIndex((v, i) => fin[i] !== v)
      if (r.values.length > fin.length || diverge >= 0) {
        const at = diverge >= 0 ? diverge : fin.length
        anomalies.push(
          `read ${label(r.index)} of key ${k} is not a prefix of the final list: it has ${JSON.stringify(r.values[at])}` +
            ` at position ${at} where the final list has ${JSON.stringify(fin[at])}; read ${showList(r.values)}, final ${showList(fin)}`
        )
      } else {
        prefixes.push(r)
        isPrefix.add(r)
      }
    }

    // (e) an append acknowledged before another was invoked comes first in the final list.
    const okInFinal = appends.filter((a) => a.op.status === "ok" && finalPos.has(a.value))
    const latestOkBefore = prefixMax(okInFinal, (a) => a.op.completeMs, (a) => finalPos.get(a.value)!)
    for (const b of appends) {
      const posB = finalPos.get(b.value)
      if (posB === undefined || b.op.status === "fail") continue
      const worst = latestOkBefore(b.op.invokeMs)
      if (worst !== undefined && worst.pos > posB)
        anomalies.push(
          `real-time order violated on key ${k}: ${label(worst.item.index)} completed before ${label(b.index)} was invoked,` +
            ` but the final list has ${b.value} at position ${posB} before ${worst.item.value} at position ${worst.pos}`
        )
    }

    // (f) a read sees every append acknowledged before it was invoked. Lost appends are
    // already reported above, so only those surviving in the final list are required here.
    for (const r of reads) {
      const missing: Array<number> = []
      if (isPrefix.has(r)) {
        // A prefix contains exactly the values at final positions below its length.
        const worst = latestOkBefore(r.op.invokeMs)
        if (worst !== undefined && worst.pos >= r.values.length)
          for (const a of okInFinal) if (a.op.completeMs < r.op.invokeMs && finalPos.get(a.value)! >= r.values.length) missing.push(a.index)
      } else {
        const seen = new Set(r.values)
        for (const a of okInFinal) if (a.op.completeMs < r.op.invokeMs && !seen.has(a.value)) missing.push(a.index)
      }
      if (missing.length > 0)
        anomalies.push(
          `stale read: ${label(r.index)} of key ${k} misses appends acknowledged before it was invoked: ${listIndices(missing)}`
        )
    }

    // A read started after another read completed sees at least what that one saw (same
    // real-time rule, for values of info appends too). Only prefixes compare by length.
    const longestBefore = prefixMax(prefixes, (r) => r.op.completeMs, (r) => r.values.length)
    for (const r of prefixes) {
      const worst = longestBefore(r.op.invokeMs)
      if (worst !== undefined && worst.pos > r.values.length)
        anomalies.push(
          `stale read: ${label(r.index)} of key ${k} returned ${r.values.length} values, but ${label(worst.item.index)},` +
            ` completed before it was invoked, had already seen ${worst.pos}`
        )
    }
  }

  return { valid: anomalies.length === 0, anomalies, lostAckedWrites, readsChecked }
}
