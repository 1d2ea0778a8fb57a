/**
 * A strict reader of the Prometheus text format (version 0.0.4), for tests: every line must
 * be a comment (# HELP / # TYPE) or a sample `name{label="value",...} number`; a sample's
 * family must have been typed before it. Throws on anything else.
 */
export interface PromSample {
  readonly name: string
  readonly labels: Readonly<Record<string, string>>
  readonly value: number
}

export interface PromScrape {
  readonly types: ReadonlyMap<string, string>
  readonly samples: ReadonlyArray<PromSample>
  /** The value of the one sample of `name` whose labels include `labels` (throws when none or several). */
  readonly value: (name: string, labels?: Readonly<Record<string, string>>) => number
  /** Every sample of `name` whose labels include `labels`. */
  readonly all: (name: string, labels?: Readonly<Record<string, string>>) => ReadonlyArray<PromSample>
}

const NAME = "[a-zA-Z_:][a-zA-Z0-9_:]*"
const SAMPLE = new RegExp(`^(${NAME})(?:\\{(.*)\\})? (\\S+)$`)
const LABEL = /\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(?:,|$)/y

const parseNumber = (text: string): number => {
  if (text === "+Inf") return Infinity
  if (text === "-Inf") return -Infinity
  if (text === "NaN") return NaN
  const n = Number(text)
  if (text.trim() === "" || Number.isNaN(n)) throw new Error(`not a number: ${text}`)
  return n
}

export const parsePrometheus = (text: string): PromScrape => {
  if (!text.endsWith("\n")) throw new Error("the exposition must end with a newline")
  const types = new Map<string, string>()
  const samples: Array<PromSample> = []
  for (const line of text.slice(0, -1).split("\n")) {
    if (line.startsWith("# HELP ")) continue
    const typed = /^# TYPE (\S+) (counter|gauge|histogram|summary|untyped)$/.exec(line)
    if (typed !== null) {
      if (types.has(typed[1]!)) throw new Error(`TYPE given twice for ${typed[1]}`)
      types.set(typed[1]!, typed[2]!)
      continue
    }
    const m = SAMPLE.exec(line)
    if (m === null) throw new Error(`not a sample line: ${JSON.stringify(line)}`)
    const [, name, labelText, value] = m
    const labels: Record<string, string> = {}
    if (labelText !== undefined && labelText.length > 0) {
      LABEL.lastIndex = 0
      while (LABEL.lastIndex < labelText.length) {
        const l = LABEL.exec(labelText)
        if (l === null) throw new Error(`bad labels in ${JSON.stringify(line)}`)
        labels[l[1]!] = l[2]!.replace(/\\n/g, "\n").replace(/\\"/g, "\"").replace(/\\\\/g, "\\")
      }
    }
    const family = [...types.keys()].find((t) => name === t || (types.get(t) === "histogram" && /^(.*)_(bucket|sum|count)$/.exec(name!)?.[1] === t))
    if (family === undefined) throw new Error(`sample ${name} has no TYPE before it`)
    samples.push({ name: name!, labels, value: parseNumber(value!) })
  }
  const all = (name: string, labels: Readonly<Record<string, string>> = {}) =>
    samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
  return {
    types,
    samples,
    all,
    value: (name, labels) => {
      const found = all(name, labels)
      if (found.length !== 1) throw new Error(`${found.length} samples of ${name} ${JSON.stringify(labels ?? {})}`)
      return found[0]!.value
    }
  }
}
