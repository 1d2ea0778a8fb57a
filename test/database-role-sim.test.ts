import { describe, expect, it } from "@effect/vitest"
import { nextStep, rebuildProgress, type RoleObservation, type RoleStep } from "../src/domain/cluster/databaseRole.js"
import { runRoleSimulation } from "./support/databaseRoleSim.js"

/**
 * The database role machine against a model of the lease and the server over seeds.
 * ROLE_SIM_SEEDS=N runs N seeds (default 2000); ROLE_SIM_SEED=S replays one.
 */
const seeds = (): ReadonlyArray<number> => {
  const one = process.env.ROLE_SIM_SEED
  if (one !== undefined) return [Number(one)]
  return Array.from({ length: Number(process.env.ROLE_SIM_SEEDS ?? 2000) }, (_, i) => i + 1)
}

describe("database role simulation", () => {
  it("RW is open only with the lease, never on a diverged server; the node serves when it can and settles as a replica (a diverged one rebuilt when allowed)", () => {
    const failed: Array<string> = []
    let promotions = 0
    let stepDowns = 0
    let diverged = 0
    let rebuilds = 0
    for (const seed of seeds()) {
      const r = runRoleSimulation({ seed, ticks: 600 })
      promotions += r.promotions
      stepDowns += r.stepDowns
      if (r.diverged) diverged++
      rebuilds += r.rebuilds
      if (r.failures.length > 0) {
        const line = `seed ${seed} failed (replay: ROLE_SIM_SEED=${seed} npx vitest run test/database-role-sim.test.ts): ${r.failures.slice(0, 3).join("; ")}`
        console.error(line)
        failed.push(line)
      }
    }
    console.log(`database role sim: ${seeds().length} seeds, ${promotions} promotions, ${stepDowns} step-downs, ${diverged} diverged, ${rebuilds} rebuilds`)
    expect(failed).toEqual([])
    if (seeds().length > 100) {
      // The runs do exercise the machine: promotions, step-downs and divergence all happen.
      expect(promotions).toBeGreaterThan(seeds().length)
      expect(stepDowns).toBeGreaterThan(seeds().length)
      expect(diverged).toBeGreaterThan(0)
      expect(rebuilds).toBeGreaterThan(0)
    }
  })

  it("catches a machine that does not fence on a lease loss (the checks can fail)", () => {
    // Without the lease-event fence, and with a decision that lets a master keep serving.
    const careless = (o: RoleObservation): RoleStep =>
      o.role === "master" && !o.leaseHeld ? { _tag: "Wait" } : nextStep(o)
    let caught = 0
    for (let seed = 1; seed <= 50; seed++) {
      const r = runRoleSimulation({ seed, ticks: 600, decide: careless, fenceOnLeaseLoss: false })
      if (r.failures.some((f) => f.includes("RW open without the lease"))) caught++
    }
    expect(caught).toBeGreaterThan(0)
  })

  it("reports a rebuild's progress: share applied, rate and time left", () => {
    expect(rebuildProgress({ reason: "r", elapsedMs: 10_000, applied: 250, target: 1_000 }))
      .toEqual({ reason: "r", phase: "replay", elapsedS: 10, appliedTxns: 250, targetTxns: 1_000, percent: 25, txnsPerS: 25, etaS: 30 })
    expect(rebuildProgress({ reason: "r", elapsedMs: 2_000, applied: 0, target: 10 }).etaS).toBeNull()
    expect(rebuildProgress({ reason: "r", elapsedMs: 2_000, applied: 12, target: 10 })).toMatchObject({ appliedTxns: 10, percent: 100, etaS: 0 })
    expect(rebuildProgress({ reason: "r", elapsedMs: 0, applied: 0, target: 0 }).percent).toBe(100)
  })

  it("decides the lease first: a master that lost it steps down whatever else is wrong", () => {
    const base: RoleObservation = {
      role: "master",
      leaseHeld: false,
      serverUp: false,
      serverRestarted: true,
      pipelineRunning: false,
      probeDue: true,
      mayRebuild: false,
      rebuildRequested: false
    }
    expect(nextStep(base)).toEqual({ _tag: "StepDown", reason: "the lease is no longer held" })
    expect(nextStep({ ...base, role: "replica", leaseHeld: true })._tag).toBe("Calibrate")
    expect(nextStep({ ...base, role: "diverged", leaseHeld: true, serverUp: true, serverRestarted: false })._tag).toBe("Wait")
    expect(nextStep({ ...base, role: "diverged", leaseHeld: true, serverUp: true, serverRestarted: false, mayRebuild: true })._tag).toBe("Rebuild")
    // A requested rebuild of a replica, unless it holds the lease (it promotes instead).
    const replica = { ...base, role: "replica" as const, serverUp: true, serverRestarted: false, rebuildRequested: true }
    expect(nextStep(replica)._tag).toBe("Rebuild")
    expect(nextStep({ ...replica, leaseHeld: true })._tag).toBe("Promote")
  })
})
