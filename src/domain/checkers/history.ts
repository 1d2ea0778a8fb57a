/**
 * Histories of client operations recorded by the fault-injection suite, as plain data.
 * Times are ms from one monotonic clock in the test runner, so they compare across clients.
 */

/**
 * ok: acknowledged. fail: definitely not applied. info: indeterminate (timeout, dropped
 * connection during commit): it may have taken effect at any time after its invoke, or never.
 */
export type OpStatus = "ok" | "fail" | "info"

export interface Op<I, O> {
  /** The client (logical process) that ran the op; one op at a time per process. */
  readonly process: number
  readonly invokeMs: number
  /** Infinity for info: an indeterminate op has no known end. */
  readonly completeMs: number
  readonly status: OpStatus
  readonly input: I
  /** Only ok ops have a meaningful output. */
  readonly output?: O
}

/** An op with its position in the history as recorded, which anomaly messages name. */
export interface Indexed<I, O> {
  readonly index: number
  readonly op: Op<I, O>
}

export const indexed = <I, O>(history: ReadonlyArray<Op<I, O>>): ReadonlyArray<Indexed<I, O>> =>
  history.map((op, index) => ({ index, op }))

/** Stable: ties keep the recorded order. */
export const sortByInvoke = <I, O>(history: ReadonlyArray<Op<I, O>>): ReadonlyArray<Indexed<I, O>> =>
  [...indexed(history)].sort((a, b) => a.op.invokeMs - b.op.invokeMs || a.index - b.index)

/** When the op is known to have ended: info ops never are, whatever completeMs says. */
export const completeTime = (op: Op<unknown, unknown>): number => (op.status === "info" ? Infinity : op.completeMs)

/**
 * Real-time order: `a` was acknowledged before `b` was invoked. Strict, so equal timestamps
 * (same ms) count as concurrent and never produce a false anomaly.
 */
export const precedes = (a: Op<unknown, unknown>, b: Op<unknown, unknown>): boolean =>
  a.status === "ok" && a.completeMs < b.invokeMs

const fmtMs = (t: number): string => (Number.isFinite(t) ? String(t) : "∞")

/** "#3 p2 transfer 0->1 5 [ok 10..20ms]": how anomaly messages name an op. */
export const opLabel = (index: number, op: Op<unknown, unknown>, what: string): string =>
  `#${index} p${op.process} ${what} [${op.status} ${fmtMs(op.invokeMs)}..${fmtMs(completeTime(op))}ms]`

/** "#1, #4, #9 and 12 more": op references, kept short for large histories. */
export const listIndices = (indices: ReadonlyArray<number>, max = 10): string =>
  indices.length === 0
    ? "none"
    : indices.slice(0, max).map((i) => `#${i}`).join(", ") + (indices.length > max ? ` and ${indices.length - max} more` : "")

/** A short rendering of a list of values for messages. */
export const showList = (xs: ReadonlyArray<unknown>, max = 20): string =>
  `[${xs.slice(0, max).map((x) => JSON.stringify(x)).join(", ")}${xs.length > max ? `, … (${xs.length} items)` : ""}]`

/** Why an op's timing or status is unusable, or undefined when it is well formed. */
export const malformed = (op: Op<unknown, unknown>): string | undefined => {
  if (op.status !== "ok" && op.status !== "fail" && op.status !== "info") return `unknown status ${JSON.stringify(op.status)}`
  if (!Number.isFinite(op.invokeMs)) return "invoke time is not finite"
  if (op.status !== "info" && !Number.isFinite(op.completeMs)) return `${op.status} op has no finite completion time`
  if (op.status !== "info" && op.completeMs < op.invokeMs) return "completes before it is invoked"
  return undefined
}
