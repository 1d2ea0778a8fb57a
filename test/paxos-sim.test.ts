import { describe, expect, it } from "@effect/vitest"
import { defaultSimOptions, runSimulation } from "./support/paxosSim.js"

/**
 * Seeded simulation of the Paxos core, with membership changes (any new voters and learners,
 * among the founding nodes and two spares) under the faults. PAXOS_SIM_SEEDS=N runs N seeds per cluster size
 * (defaults: 2,000 for 3 nodes, 1,000 for 5); PAXOS_SIM_SEED=S NODES=K replays one seed.
 */
const seedsFor = (nodes: number): ReadonlyArray<number> => {
  const one = process.env.PAXOS_SIM_SEED
  if (one !== undefined) return Number(process.env.NODES ?? 3) === nodes ? [Number(one)] : []
  const count = Number(process.env.PAXOS_SIM_SEEDS ?? (nodes === 3 ? 2000 : 1000))
  return Array.from({ length: count }, (_, i) => i + 1)
}

describe("Paxos simulation", () => {
  for (const nodes of [3, 5]) {
    it(`agreement, validity, durability and liveness hold for ${nodes} nodes over seeds`, { timeout: 600_000 }, () => {
      const failed: Array<string> = []
      let chosen = 0
      let confirmed = 0
      let crashes = 0
      let installs = 0
      let membershipChanges = 0
      const messages: Record<string, number> = {}
      const seeds = seedsFor(nodes)
      for (const seed of seeds) {
        const r = runSimulation(defaultSimOptions(seed, nodes))
        chosen += r.chosenInstances
        confirmed += r.confirmed
        crashes += r.crashes
        installs += r.installs
        membershipChanges += r.membershipChanges
        for (const [k, n] of Object.entries(r.messages)) messages[k] = (messages[k] ?? 0) + n
        if (r.failures.length > 0) {
          const line = `seed ${seed} failed (replay: PAXOS_SIM_SEED=${seed} NODES=${nodes} npx vitest run test/paxos-sim.test.ts): ${r.failures.join("; ")}`
          console.error(line)
          failed.push(line)
        }
      }
      console.log(`paxos sim: ${nodes} nodes, ${seeds.length} seeds, ${chosen} instances chosen, ${confirmed} proposals confirmed, ${crashes} crashes, ${installs} installs, ${membershipChanges} membership changes, messages ${JSON.stringify(messages)}`)
      expect(failed).toEqual([])
      // The runs must actually exercise the protocol, not pass vacuously.
      if (seeds.length >= 10) {
        expect(confirmed).toBeGreaterThan(seeds.length * 10)
        expect(crashes).toBeGreaterThan(0)
        // Compaction left nodes behind, and they skipped ahead.
        expect(installs).toBeGreaterThan(0)
        // Member sets changed under the faults (any new voters and learners, spare nodes too).
        expect(membershipChanges).toBeGreaterThan(seeds.length)
        // Every path of the protocol ran somewhere.
        for (const kind of ["Prepare", "Promise", "Accept", "Accepted", "Nack", "Commit", "Status", "CatchupRequest", "CatchupReply", "Forward", "ForwardResult", "readChosen"]) {
          expect(messages[kind] ?? 0, kind).toBeGreaterThan(0)
        }
      }
    })
  }
})
