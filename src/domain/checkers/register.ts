/**
 * Single-register linearizability checker: the Wing & Gong search with Lowe's memoization
 * (a configuration is the set of ops linearized so far plus the register value; a
 * configuration seen before cannot lead anywhere new). ok ops take effect between invoke and
 * completion; info ops at any time after invoke or never; fail ops never.
 */
import { type Op, malformed, opLabel } from "./history.js"

export type RegisterValue = number | string | null

export type RegisterInput =
  | { readonly type: "read" }
  | { readonly type: "write"; readonly value: RegisterValue }
  | { readonly type: "cas"; readonly from: RegisterValue; readonly to: RegisterValue }

/** read: the value seen; cas: whether it swapped; write: nothing. */
export type RegisterOutput = RegisterValue | boolean

export type RegisterOp = Op<RegisterInput, RegisterOutput>

export interface RegisterCheckOptions {
  /** The register's value before the history (default null). */
  readonly initial?: RegisterValue
  /** Give up ("unknown") after this many linearization attempts (default 1e6). */
  readonly maxExplored?: number
}

export interface RegisterResult {
  readonly valid: boolean | "unknown"
  readonly anomalies: ReadonlyArray<string>
  /** Linearization attempts made: one per (configuration, candidate op) tried. */
  readonly explored: number
}

const REJECT: unique symbol = Symbol("reject")
type Step = (state: RegisterValue) => RegisterValue | typeof REJECT

interface Call {
  /** Position in the search's bitset. */
  readonly id: number
  /** Position in the recorded history, for messages. */
  readonly index: number
  readonly ok: boolean
  readonly step: Step
}

/** A node of the doubly linked event list that the search lifts ops out of and back into. */
interface Entry {
  readonly call: Call
  readonly isCall: boolean
  /** A call's return entry; null for info calls, which never return. */
  match: Entry | null
  prev: Entry | null
  next: Entry | null
}

const show = (v: unknown): string => JSON.stringify(v)

const describe = (op: RegisterOp): string => {
  const out = op.status === "ok" && op.output !== undefined ? ` -> ${show(op.output)}` : ""
  switch (op.input.type) {
    case "read":
      return `read${out}`
    case "write":
      return `write ${show(op.input.value)}`
    case "cas":
      return `cas ${show(op.input.from)}->${show(op.input.to)}${out}`
  }
}

const isValue = (v: unknown): v is RegisterValue => v === null || typeof v === "number" || typeof v === "string"

/** The op's effect on the register, undefined when it cannot have any, or a string when malformed. */
const stepOf = (op: RegisterOp): Step | undefined | string => {
  if (op.status === "fail") return undefined
  const input = op.input
  switch (input.type) {
    case "read": {
      // An unacknowledged read observed nothing we know of and changes nothing.
      if (op.status === "info") return undefined
      const seen = op.output
      if (!isValue(seen)) return "an ok read needs its value (or null) as output"
      return (s) => (s === seen ? s : REJECT)
    }
    case "write": {
      const v = input.value
      return () => v
    }
    case "cas": {
      const { from, to } = input
      // An info cas that failed its comparison changed nothing: same as never taking effect.
      if (op.status === "info") return (s) => (s === from ? to : REJECT)
      if (typeof op.output !== "boolean") return "an ok cas needs a boolean output"
      return op.output ? (s) => (s === from ? to : REJECT) : (s) => (s !== from ? s : REJECT)
    }
  }
}

const stateKey = (v: RegisterValue): string => (v === null ? "null" : typeof v === "number" ? `n${v}` : `s${v}`)

export const checkRegister = (history: ReadonlyArray<RegisterOp>, options: RegisterCheckOptions = {}): RegisterResult => {
  const initial = options.initial ?? null
  const maxExplored = options.maxExplored ?? 1_000_000
  const label = (index: number) => opLabel(index, history[index], describe(history[index]))
  const anomalies: Array<string> = []

  const calls: Array<{ readonly call: Call; readonly op: RegisterOp }> = []
  history.forEach((op, index) => {
    const why = malformed(op)
    const step = why === undefined ? stepOf(op) : why
    if (typeof step === "string") anomalies.push(`malformed op ${label(index)}: ${step}`)
    else if (step !== undefined) calls.push({ call: { id: calls.length, index, ok: op.status === "ok", step }, op })
  })
  if (anomalies.length > 0) return { valid: false, anomalies, explored: 0 }

  // Events in time order; at equal times calls come first, so touching intervals count as
  // concurrent and the search stays permissive.
  const events: Array<{ readonly t: number; readonly entry: Entry }> = []
  for (const { call, op } of calls) {
    const inv: Entry = { call, isCall: true, match: null, prev: null, next: null }
    events.push({ t: op.invokeMs, entry: inv })
    if (call.ok) {
      const ret: Entry = { call, isCall: false, match: null, prev: null, next: null }
      inv.match = ret
      events.push({ t: op.completeMs, entry: ret })
    }
  }
  events.sort((a, b) => a.t - b.t || Number(a.entry.isCall ? 0 : 1) - Number(b.entry.isCall ? 0 : 1) || a.entry.call.id - b.entry.call.id)
  const head: Entry = { call: { id: -1, index: -1, ok: false, step: () => REJECT }, isCall: false, match: null, prev: null, next: null }
  let last = head
  for (const { entry } of events) {
    last.next = entry
    entry.prev = last
    last = entry
  }

  const unlink = (e: Entry) => {
    e.prev!.next = e.next
    if (e.next !== null) e.next.prev = e.prev
  }
  // Removed entries keep their neighbours, so relinking in reverse order of removal restores the list.
  const relink = (e: Entry) => {
    e.prev!.next = e
    if (e.next !== null) e.next.prev = e
  }
  const lift = (e: Entry) => {
    unlink(e)
    if (e.match !== null) unlink(e.match)
  }
  const unlift = (e: Entry) => {
    if (e.match !== null) relink(e.match)
    relink(e)
  }

  let remaining = calls.filter((c) => c.call.ok).length
  let state: RegisterValue = initial
  let linearized = 0n
  let explored = 0
  const seen = new Set<string>()
  const stack: Array<{ readonly entry: Entry; readonly before: RegisterValue }> = []
  // The deepest dead end, for the anomaly message.
  let best: { readonly depth: number; readonly blocked: Call; readonly prefix: ReadonlyArray<Call>; readonly pending: ReadonlyArray<Call>; readonly state: RegisterValue } | undefined

  let entry: Entry | null = head.next
  while (remaining > 0 && entry !== null) {
    if (entry.isCall) {
      if (++explored > maxExplored) {
        return {
          valid: "unknown",
          anomalies: [`search bound reached after ${maxExplored} linearization attempts over ${calls.length} ops: linearizability unknown`],
          explored: maxExplored
        }
      }
      const next = entry.call.step(state)
      if (next !== REJECT) {
        const bits = linearized | (1n << BigInt(entry.call.id))
        const key = `${bits.toString(36)}|${stateKey(next)}`
        if (!seen.has(key)) {
          seen.add(key)
          stack.push({ entry, before: state })
          state = next
          linearized = bits
          if (entry.call.ok) remaining--
          lift(entry)
          entry = head.next
          continue
        }
      }
      entry = entry.next
    } else {
      // An ok op's completion with the op not yet linearized: this path is a dead end.
      if (best === undefined || stack.length > best.depth) {
        const pending: Array<Call> = []
        for (let e = head.next; e !== null && e !== entry; e = e.next) if (e.isCall) pending.push(e.call)
        best = { depth: stack.length, blocked: entry.call, prefix: stack.map((s) => s.entry.call), pending, state }
      }
      const top = stack.pop()
      if (top === undefined) break
      state = top.before
      linearized &= ~(1n << BigInt(top.entry.call.id))
      if (top.entry.call.ok) remaining++
      unlift(top.entry)
      entry = top.entry.next
    }
  }

  if (remaining === 0) return { valid: true, anomalies, explored }
  const b = best
  if (b === undefined) return { valid: false, anomalies: ["not linearizable"], explored }
  const tail = b.prefix.slice(-8).map((c) => label(c.index))
  const others = b.pending.filter((c) => c.id !== b.blocked.id).map((c) => label(c.index))
  anomalies.push(
    `not linearizable: ${label(b.blocked.index)} cannot take effect before it completes.` +
      ` Longest consistent order found (${b.depth} ops${b.depth > tail.length ? `, last ${tail.length}` : ""}): ` +
      `${tail.length === 0 ? `(none; initial value ${show(initial)})` : tail.join(", ")}, leaving the register at ${show(b.state)}` +
      `${others.length > 0 ? `; other ops pending then: ${others.join(", ")}` : ""}`
  )
  return { valid: false, anomalies, explored }
}
