import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { requestSwitchover } from "../src/client/StatusClient.js"
import * as LocalCluster from "../src/testing/LocalCluster.js"
import { ackedMissing, adminQuery, createAppUser, runCli, startWriter, statuses, waitConverged, waitForMaster, writesFlowing } from "./support/dbCluster.js"

const tableOf = (nodeId: number) => `d.t${nodeId}`

/** `node dist/main.js switchover ...`: exit code and output. */
const cli = (args: ReadonlyArray<string>) => runCli(["switchover", ...args])

describe("switchover", () => {
  it.live("moves the master to the node asked for (or a caught-up one) under a write load, losing no acknowledged write; refuses what it cannot do", () =>
    Effect.gen(function*() {
      const c = yield* LocalCluster.make({ nodes: 3, database: true })
      const first = yield* waitForMaster(c, "a first master")
      yield* createAppUser(first)
      yield* adminQuery(first, "CREATE DATABASE d")
      for (const n of c.nodes) yield* adminQuery(first, `CREATE TABLE ${tableOf(n.nodeId)} (id INT PRIMARY KEY, v INT)`)
      yield* waitConverged(c, 60_000)
      const admin = c.nodes.map((n) => `${n.host}:${n.adminPort}`).join(",")
      const addressOf = (id: number) => { const n = c.nodes.find((x) => x.nodeId === id)!; return { address: `${n.host}:${n.adminPort}`, token: c.adminToken } }

      const writers = yield* Effect.scoped(Effect.gen(function*() {
        // One writer through each node's RW port: one always goes through the master.
        const writers = yield* Effect.forEach(c.nodes, (n) => startWriter(n.rwPort!, tableOf(n.nodeId), 1_000_000))
        const flowing = writesFlowing(writers, "every writer to get writes through")
        yield* flowing
        // Refused: a node that is not the master, a target that is no member; RW stays open.
        const master = yield* waitForMaster(c, "the master")
        const replica = c.nodes.find((n) => n.nodeId !== master.nodeId)!
        const notMaster = yield* Effect.flip(requestSwitchover(addressOf(replica.nodeId), undefined))
        expect(notMaster.message).toMatch(/not the serving master/)
        const noMember = yield* Effect.flip(requestSwitchover(addressOf(master.nodeId), 9))
        expect(noMember.message).toMatch(/node 9 is not a voting member/)
        yield* flowing

        // By name, through the API, then through the CLI; then to whichever has caught up.
        const target = c.nodes.find((n) => n.nodeId !== master.nodeId)!.nodeId
        const done = yield* requestSwitchover(addressOf(master.nodeId), target)
        expect(done).toMatchObject({ from: master.nodeId, to: target, master: target })
        expect((yield* waitForMaster(c, "the new master")).nodeId).toBe(target)
        yield* flowing

        const next = c.nodes.find((n) => n.nodeId !== target)!.nodeId
        const byCli = yield* cli(["--admin", admin, "--token", c.adminToken, "--to", String(next)])
        expect(byCli.code, byCli.out).toBe(0)
        expect(byCli.out).toContain(`node ${target} is master`)
        expect(byCli.out).toContain(`done: node ${next} is master`)
        yield* flowing

        const any = yield* cli(["--config", c.nodes[0]!.configPath])
        expect(any.code, any.out).toBe(0)
        const after = yield* waitForMaster(c, "a master after the third switchover")
        expect(after.nodeId).not.toBe(next)
        yield* flowing

        // No master to ask: the CLI says so and exits non-zero.
        const bad = yield* cli(["--admin", "127.0.0.1:1"])
        expect(bad.code).not.toBe(0)
        expect(bad.out).toMatch(/no node answers/)
        return writers
      }))

      yield* waitConverged(c, 60_000)
      for (const [i, w] of writers.entries()) {
        const table = tableOf(c.nodes[i]!.nodeId)
        const missing = yield* ackedMissing(c.nodes, w, table)
        expect(missing, `${table}: acknowledged writes missing`).toEqual([])
        expect(w.acked.length).toBeGreaterThan(50)
      }
      // A drained switchover leaves the old masters replicas in step, none rebuilt or diverged.
      for (const s of yield* statuses(c)) {
        expect("error" in s ? s.error : s.database?.diverged ?? null).toBeNull()
      }
    }).pipe(Effect.scoped), { timeout: 300_000 })
})
