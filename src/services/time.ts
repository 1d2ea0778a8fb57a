/**
 * Time and ids from Effect's Clock and Random, so that tests can drive them (TestClock,
 * Random.withSeed); callbacks outside a fiber (socket handlers) read them synchronously.
 */
import { Effect, Random } from "effect"

/** A reader of the Clock's monotonic time in milliseconds (never jumps with the wall clock). */
export const monotonicMs: Effect.Effect<() => number> = Effect.clockWith((clock) =>
  Effect.succeed(() => Number(clock.monotonicTimeNanosUnsafe()) / 1e6)
)

/** A random non-negative 31-bit integer (ids, nonces, seeds). */
export const randomId: Effect.Effect<number> = Random.nextIntBetween(0, 2 ** 31 - 1)

