import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as Logging from "../src/services/logging.js"

const capture = (format: Logging.LogFormat, level?: Logging.LogLevelName) => {
  const lines: Array<string> = []
  return { lines, layer: Logging.layer({ format, level, nodeId: 7, write: (l) => lines.push(l) }) }
}

describe("logs", () => {
  it.effect("text: one line with the date and time, the level and the node id; annotations as key=value", () =>
    Effect.gen(function*() {
      const { layer, lines } = capture("text")
      yield* Effect.logInfo("database role: calibrating -> replica").pipe(Effect.annotateLogs({ component: "x" }), Effect.provide(layer))
      yield* Effect.logDebug("not at info").pipe(Effect.provide(layer))
      expect(lines).toHaveLength(1)
      expect(lines[0]).toMatch(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z INFO  node=7 database role: calibrating -> replica component=x\n$/)
    }))

  it.effect("json: one object per line, never failing the fiber (a cycle, a BigInt, an error's message)", () =>
    Effect.gen(function*() {
      const { layer, lines } = capture("json", "debug")
      const cyclic: Record<string, unknown> = { n: 10n }
      cyclic.self = cyclic
      yield* Effect.logWarning("odd values", cyclic, new Error("boom")).pipe(Effect.provide(layer))
      yield* Effect.logDebug("debug shows").pipe(Effect.provide(layer))
      expect(lines).toHaveLength(2)
      const first = JSON.parse(lines[0]!) as { time: string; level: string; node: number; message: string; details: Array<unknown> }
      expect(first).toMatchObject({ level: "WARN", node: 7, message: "odd values" })
      expect(JSON.stringify(first.details)).toMatch(/boom/)
      expect(JSON.parse(lines[1]!)).toMatchObject({ level: "DEBUG", message: "debug shows" })
    }))
})
