import { Schema } from "effect"

/** The value was not confirmed chosen in time; it may still be chosen later (indeterminate). */
export class ProposeTimeout extends Schema.TaggedError<ProposeTimeout>()("ProposeTimeout", {
  timeoutMs: Schema.Number
}) {
  override get message(): string {
    return `proposal not confirmed within ${this.timeoutMs} ms (it may still be chosen)`
  }
}

/** Too few members are reachable to form a majority; the value may still be chosen later. */
export class NotEnoughNodes extends Schema.TaggedError<NotEnoughNodes>()("NotEnoughNodes", {
  reachable: Schema.Number,
  quorum: Schema.Number
}) {
  override get message(): string {
    return `only ${this.reachable} of the ${this.quorum} nodes needed for a majority are reachable`
  }
}

/** Another value was chosen in the instance this proposal was placed in: it was not chosen. */
export class Superseded extends Schema.TaggedError<Superseded>()("Superseded", {
  instance: Schema.Number
}) {
  override get message(): string {
    return `another value was chosen in instance ${this.instance}; this proposal was not`
  }
}

/**
 * The value is larger than the log takes (a frame must carry it whole): refused before it
 * is placed, so it can never block the log. Split it (BinlogPart) instead.
 */
export class ValueTooLarge extends Schema.TaggedError<ValueTooLarge>()("ValueTooLarge", {
  bytes: Schema.Number,
  maxBytes: Schema.Number
}) {
  override get message(): string {
    return `a value of ${this.bytes} bytes exceeds the log's maximum of ${this.maxBytes}`
  }
}

export const ProposeError = Schema.Union([ProposeTimeout, NotEnoughNodes, Superseded, ValueTooLarge])
export type ProposeError = ProposeTimeout | NotEnoughNodes | Superseded | ValueTooLarge
