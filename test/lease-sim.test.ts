import { describe, expect, it } from "@effect/vitest"
import { defaultLeaseSimOptions, type LeaseScenario, runLeaseSimulation } from "./support/leaseSim.js"

/**
 * The master lease over the Paxos simulator with drifting clocks. LEASE_SIM_SEEDS=N runs
 * N seeds per scenario (default 150); LEASE_SIM_SEED=S LEASE_SIM_SCENARIO=X replays one.
 */
const seeds = (): ReadonlyArray<number> => {
  const one = process.env.LEASE_SIM_SEED
  if (one !== undefined) return [Number(one)]
  return Array.from({ length: Number(process.env.LEASE_SIM_SEEDS ?? 150) }, (_, i) => i + 1)
}

const scenarios: ReadonlyArray<LeaseScenario> = process.env.LEASE_SIM_SCENARIO !== undefined
  ? [process.env.LEASE_SIM_SCENARIO as LeaseScenario]
  : ["loss", "crash-master", "isolate-master", "switchover", "chaos"]

describe("master lease simulation", () => {
  for (const scenario of scenarios) {
    it(`${scenario}: never two holders; a master is always (re)elected within the bound`, { timeout: 300_000 }, () => {
      const failed: Array<string> = []
      let elections = 0
      let changes = 0
      let resignations = 0
      let handovers = 0
      let landed = 0
      for (const seed of seeds()) {
        for (const nodes of [3, 5]) {
          const r = runLeaseSimulation(defaultLeaseSimOptions(seed, scenario, nodes))
          elections += r.elections
          changes += r.masterChanges
          resignations += r.resignations
          handovers += r.handovers
          landed += r.handoversLanded
          if (r.failures.length > 0) {
            const line = `seed ${seed} (${nodes} nodes) failed (replay: LEASE_SIM_SEED=${seed} LEASE_SIM_SCENARIO=${scenario} npx vitest run test/lease-sim.test.ts): ${r.failures.join("; ")}`
            console.error(line)
            failed.push(line)
          }
        }
      }
      console.log(`lease sim ${scenario}: ${elections} elections, ${changes} master changes, ${resignations} resignations, ${handovers} switchovers (${landed} to the successor)`)
      expect(failed).toEqual([])
      if (scenario === "loss") expect(changes).toBe(0)
      else if (seeds().length > 5) {
        expect(changes).toBeGreaterThan(seeds().length)
        // A crashed holder cannot resign; an isolated one whose database fails does.
        if (scenario !== "crash-master") expect(resignations).toBeGreaterThan(0)
        // Without other faults, the node handed over to is the next master (message loss
        // may rarely delay it past the others' wait).
        if (scenario === "switchover") expect(landed).toBeGreaterThan(handovers * 0.95)
      }
    })
  }

  it("catches two holders when the margin does not cover clock drift (the checker can fail)", () => {
    let caught = 0
    for (let seed = 1; seed <= 40; seed++) {
      const r = runLeaseSimulation({ ...defaultLeaseSimOptions(seed, "isolate-master"), marginMs: 0, rho: 0.2 })
      if (r.failures.some((f) => f.startsWith("two holders"))) caught++
    }
    expect(caught).toBeGreaterThan(0)
  })
})
