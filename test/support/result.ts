import { Result } from "effect"

/** The success of a Result, or a test failure naming the error. */
export const ok = <A, E>(r: Result.Result<A, E>): A => {
  if (Result.isFailure(r)) throw new Error(`expected success, got ${String((r.failure as { message?: unknown }).message ?? r.failure)}`)
  return r.success
}
