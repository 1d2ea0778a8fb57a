/**
 * The agent's logs (docs/operations.md, "Logs"): to stderr, one event per line, with the
 * date and time (UTC), the level and the node id; `json` for log shippers. stdout is left
 * to what tools read (the `node` command's ready line, the other commands' answers).
 */
import { Effect, Layer, Logger, References } from "effect"
import { inspect } from "node:util"

export type LogFormat = "text" | "json"
export type LogLevelName = "debug" | "info" | "warn" | "error"

export interface LogSettings {
  readonly format?: LogFormat | undefined
  readonly level?: LogLevelName | undefined
  /** Put on every line (the agent's node id). */
  readonly nodeId?: number | undefined
  /** Where lines go (default: the process's stderr). */
  readonly write?: ((line: string) => void) | undefined
}

const MINIMUM = { debug: "Debug", info: "Info", warn: "Warn", error: "Error" } as const

/** A message part on one line: strings as they are, anything else inspected compactly. */
const oneLine = (part: unknown): string =>
  typeof part === "string" ? part : inspect(part, { breakLength: Infinity, compact: true, depth: 4 })

/**
 * JSON that never throws: a value seen twice (a cycle) becomes "[Circular]", a BigInt its
 * digits; anything else JSON cannot take falls back to inspect's text. A log line must not
 * fail the fiber that logs.
 */
const safeJson = (value: unknown): string => {
  try {
    const seen = new WeakSet<object>()
    return JSON.stringify(value, (_key, v: unknown) => {
      if (typeof v === "bigint") return v.toString()
      if (typeof v === "object" && v !== null) {
        if (seen.has(v)) return "[Circular]"
        seen.add(v)
      }
      return v
    })
  } catch {
    return JSON.stringify({ unserializable: inspect(value, { breakLength: Infinity, depth: 4 }) })
  }
}

/** An Error as JSON keeps its message (a getter, which JSON.stringify skips) and its fields. */
const jsonable = (part: unknown): unknown => (part instanceof Error ? { ...part, message: part.message } : part)

/** The logger: the structured event (Effect's own) written as a text or JSON line. */
export const logger = (settings: LogSettings = {}) => {
  const write = settings.write ?? ((line: string) => void process.stderr.write(line))
  const node = settings.nodeId
  return Logger.map(Logger.formatStructured, (event) => {
    const parts = Array.isArray(event.message) ? event.message : [event.message]
    const annotations = Object.keys(event.annotations).length > 0 ? event.annotations : undefined
    if (settings.format === "json") {
      const [first, ...details] = parts
      write(safeJson({
        time: event.timestamp,
        level: event.level,
        ...(node !== undefined ? { node } : {}),
        message: typeof first === "string" ? first : oneLine(first),
        ...(details.length > 0 ? { details: details.map(jsonable) } : {}),
        ...(annotations !== undefined ? { annotations } : {}),
        ...(event.cause !== undefined ? { cause: event.cause } : {})
      }) + "\n")
      return
    }
    const fields = annotations === undefined ? "" : " " + Object.entries(annotations).map(([k, v]) => `${k}=${oneLine(v)}`).join(" ")
    const cause = event.cause === undefined ? "" : "\n  " + event.cause.split("\n").join("\n  ")
    write(`${event.timestamp} ${event.level.padEnd(5)}${node !== undefined ? ` node=${node}` : ""} ${parts.map(oneLine).join(" ")}${fields}${cause}\n`)
  })
}

/** Replaces the default logger (stdout) with this one, at the given minimum level (default info). */
export const layer = (settings: LogSettings = {}): Layer.Layer<never> =>
  Layer.mergeAll(
    Logger.layer([logger(settings)]),
    Layer.succeed(References.MinimumLogLevel, MINIMUM[settings.level ?? "info"])
  )

/** Runs `effect` with this logger (for a program that has no Layer of its own). */
export const withLogger = (settings: LogSettings) => <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.provide(effect, layer(settings))
