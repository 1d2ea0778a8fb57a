import { describe, expect, it } from "@effect/vitest"
import { execFile, execFileSync } from "node:child_process"
import { join } from "node:path"
import { iptablesUsable } from "../bench/torture/faults.js"

const root = join(import.meta.dirname, "..")

/** Builds the bench tree once (the suite's runner lives there, as `npm run torture`). */
let built = false
const build = () => {
  if (built) return
  execFileSync(process.execPath, [join(root, "node_modules/typescript/bin/tsc"), "-p", "tsconfig.bench.json"], { cwd: root, stdio: "pipe" })
  built = true
}

/** Runs `npm run torture -- ARGS` (already built) and returns its final JSON line. */
const torture = (args: ReadonlyArray<string>) =>
  new Promise<{ summary: Record<string, unknown>; output: string }>((resolve, reject) => {
    execFile(process.execPath, [join(root, "build-bench/bench/torture.js"), ...args], { cwd: root, maxBuffer: 64 * 1024 * 1024 }, (error, stdout, stderr) => {
      const lines = stdout.trim().split("\n")
      try {
        resolve({ summary: JSON.parse(lines[lines.length - 1]!), output: stdout + (error !== null ? `\n${stderr.slice(-4000)}` : "") })
      } catch {
        reject(new Error(`torture printed no JSON line: ${stdout.slice(-2000)}\n${stderr.slice(-4000)}`))
      }
    })
  })

const noPartitions = iptablesUsable()

/** The CI form of the fault suite: bank transfers under kills and partitions. */
describe("fault suite (short form)", () => {
  it("bank under SIGKILLs: no anomaly, no lost write, recovered without help", { timeout: 300_000 }, async () => {
    build()
    const { output, summary } = await torture(["--workload", "bank", "--fault", "kill", "--runs", "2", "--seconds", "12"])
    console.log(output)
    expect(summary).toMatchObject({ bench: "torture", runs: 2, failedRuns: 0, lostAckedWrites: 0, anomalies: 0, recoveredRuns: 2 })
  })

  it("bank under wipes of a node's MariaDB datadir: it comes back by itself, nothing lost", { timeout: 300_000 }, async () => {
    build()
    const { output, summary } = await torture(["--workload", "bank", "--fault", "wipe", "--runs", "1", "--seconds", "12"])
    console.log(output)
    expect(summary).toMatchObject({ bench: "torture", runs: 1, failedRuns: 0, lostAckedWrites: 0, anomalies: 0, recoveredRuns: 1 })
  })

  it("bank under membership changes and switchovers: nodes added, removed and replaced online, masters moved, nothing lost", { timeout: 300_000 }, async () => {
    build()
    const { output, summary } = await torture(["--workload", "bank", "--fault", "membership", "--runs", "1", "--seconds", "20"])
    console.log(output)
    expect(summary).toMatchObject({ bench: "torture", runs: 1, failedRuns: 0, lostAckedWrites: 0, anomalies: 0, recoveredRuns: 1 })
    const moved = await torture(["--workload", "bank", "--fault", "switchover", "--runs", "1", "--seconds", "15"])
    console.log(moved.output)
    expect(moved.summary).toMatchObject({ bench: "torture", runs: 1, failedRuns: 0, lostAckedWrites: 0, anomalies: 0, recoveredRuns: 1 })
  })

  it("register under kill-query (a client KILLs another's waiting commit while the majority is away): linearizable, nothing lost", { timeout: 300_000 }, async () => {
    build()
    const { output, summary } = await torture(["--workload", "register", "--fault", "kill-query", "--runs", "1", "--seconds", "12"])
    console.log(output)
    expect(summary).toMatchObject({ bench: "torture", runs: 1, failedRuns: 0, lostAckedWrites: 0, anomalies: 0, recoveredRuns: 1 })
  })

  it.skipIf(noPartitions !== undefined)(`bank under partitions: no anomaly, no lost write${noPartitions !== undefined ? ` (skipped: ${noPartitions})` : ""}`, { timeout: 300_000 }, async () => {
    build()
    const { output, summary } = await torture(["--workload", "bank", "--fault", "partition", "--runs", "2", "--seconds", "12"])
    console.log(output)
    expect(summary).toMatchObject({ bench: "torture", runs: 2, failedRuns: 0, lostAckedWrites: 0, anomalies: 0, recoveredRuns: 2 })
  })
})
