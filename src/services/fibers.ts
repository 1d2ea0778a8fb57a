/** Background fibers whose end is never silent. */
import { Cause, Effect } from "effect"

/**
 * Forks `self` into the enclosing scope. These fibers are meant to run until the scope
 * closes: if one ends with a failure or a defect, its cause is logged with `what`.
 */
export const forkScopedLogged = (what: string) =>
  <A, E, R>(self: Effect.Effect<A, E, R>) =>
    self.pipe(
      Effect.tapCause((cause) => Cause.hasInterruptsOnly(cause) ? Effect.void : Effect.logError(`${what} stopped`, cause)),
      Effect.forkScoped
    )
