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

/** The whole machine's CPU time so far (all cores), busy and total, in microseconds, from /proc/stat. */
const machineMicros = () => {
  const cpu = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number)
  // user nice system idle iowait irq softirq steal: idle and iowait are not busy.
  const total = cpu.slice(0, 8).reduce((a, b) => a + b, 0)
  const idle = cpu[3]! + cpu[4]!
  return { busyUs: ((total - idle) / ticksPerSecond) * 1e6, totalUs: (total / ticksPerSecond) * 1e6 }
}

/**
 * The machine's CPU over a stretch of time: busy microseconds (all processes) and the
 * busy share of all cores in percent (100 = every core busy), to tell a run bound by CPU.
 */
export const machineCpuSampler = () => {
  const before = machineMicros()
  return () => {
    const after = machineMicros()
    const busyUs = after.busyUs - before.busyUs
    return { busyUs, pct: (100 * busyUs) / (after.totalUs - before.totalUs) }
  }
}
