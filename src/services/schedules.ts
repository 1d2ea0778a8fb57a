/** The retry pacing shared by reconnects and restarts. */
import { type Duration, Schedule } from "effect"

/** Exponential from `first`, never longer than `cap` between attempts; forever unless bounded by the caller. */
export const cappedExponential = (first: Duration.Input, cap: Duration.Input) =>
  Schedule.min([Schedule.exponential(first), Schedule.spaced(cap)])
