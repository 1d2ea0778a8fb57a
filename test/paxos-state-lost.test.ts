import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { readFileSync, rmSync } from "node:fs"
import { join } from "node:path"
import * as LocalCluster from "../src/testing/LocalCluster.js"
import { fetchStatus } from "../src/client/StatusClient.js"

describe("a node whose Paxos state is lost", () => {
  it.live("refuses to start instead of voting with a blank promise, saying what to do; with its state it rejoins", () =>
    Effect.gen(function*() {
      const cluster = yield* LocalCluster.make({ nodes: 3, clusterId: "lost" })
      const masterOf = (n: LocalCluster.LocalNode) =>
        Effect.map(fetchStatus(`127.0.0.1:${n.adminPort}`, 1_000), (s) => ("error" in s ? null : s.master))
      yield* LocalCluster.waitFor("a master known to node 3", Effect.map(masterOf(cluster.nodes[2]!), (m) => m !== null), 15_000)

      // A restart with its state intact: it rejoins.
      const node = cluster.nodes[2]!
      yield* node.kill("SIGKILL")
      yield* node.start
      yield* LocalCluster.waitFor("node 3 to rejoin", Effect.map(masterOf(node), (m) => m !== null), 15_000)

      // Its Paxos state deleted while it is down: it must not start (it was not started to found a cluster).
      yield* node.kill("SIGKILL")
      const dataDir = (JSON.parse(readFileSync(node.configPath, "utf8")) as { dataDir: string }).dataDir
      rmSync(join(dataDir, "paxos"), { recursive: true, force: true })
      const refused = yield* Effect.flip(node.start)
      expect(refused.message).toContain("node 3 has no Paxos state")
      expect(refused.message).toContain("--bootstrap")
      // The other two carry on.
      yield* LocalCluster.waitFor("a master among nodes 1 and 2", Effect.map(masterOf(cluster.nodes[0]!), (m) => m === 1 || m === 2), 15_000)
    }), { timeout: 90_000 })
})
