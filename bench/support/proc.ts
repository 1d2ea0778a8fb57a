/** CPU time and memory of a process, from /proc (Linux), for the benchmarks. */
import { execFileSync } from "node:child_process"
import { readFileSync } from "node:fs"

const ticksPerSecond = Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim()) || 100

/** User + system CPU time the process has used so far, in microseconds. */
export const cpuMicros = (pid: number): number => {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
  // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
  return ((Number(fields[11]) + Number(fields[12])) / ticksPerSecond) * 1e6
}

/** Resident set size in MiB. */
export const rssMb = (pid: number): number =>
  Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? NaN) / 1024

/** CPU of several processes over a stretch of time: percent of one core, and microseconds each. */
export const cpuSampler = (pids: ReadonlyArray<number>) => {
  const start = performance.now()
  const before = pids.map(cpuMicros)
  return () => {
    const wallUs = (performance.now() - start) * 1000
    const used = pids.map((pid, i) => cpuMicros(pid) - before[i]!)
    return { wallUs, usedUs: used, pct: used.map((u) => (100 * u) / wallUs) }
  }
}
