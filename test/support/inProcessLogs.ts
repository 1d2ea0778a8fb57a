/** Paxos logs of several members running inside the test process, on loopback, in a temp dir. */
import { Effect } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { freePort } from "../../src/testing/LocalCluster.js"
import * as PaxosLog from "../../src/services/paxos/PaxosLog.js"
import * as PaxosStorage from "../../src/services/paxos/PaxosStorage.js"
import * as Transport from "../../src/services/paxos/Transport.js"
import * as MemoryNetwork from "../../src/services/paxos/MemoryNetwork.js"

export const tempDir = Effect.acquireRelease(
  Effect.sync(() => mkdtempSync(join(tmpdir(), "phxmaria-log-"))),
  (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
)

/**
 * Starts the given members of a `memberCount` cluster on one in-memory network (or on
 * `network`, e.g. TCP); returns their logs by node id, the data dir and the network.
 */
export const startLogs = (
  ids: ReadonlyArray<number>,
  memberCount: number,
  proposeTimeoutMs = 10_000,
  network: MemoryNetwork.MemoryNetwork = MemoryNetwork.make()
) =>
  Effect.gen(function*() {
    const dir = yield* tempDir
    const members = yield* Effect.forEach(Array.from({ length: memberCount }, (_, i) => i + 1), (nodeId) =>
      Effect.map(freePort(), (port) => ({ nodeId, host: "127.0.0.1", port })))
    const logs = new Map<number, PaxosLog.PaxosLogShape>()
    for (const nodeId of ids) {
      const storage = yield* PaxosStorage.make(join(dir, `n${nodeId}`))
      const log = yield* PaxosLog.make({ clusterId: "log-test", nodeId, members, proposeTimeoutMs }).pipe(
        Effect.provideService(PaxosStorage.PaxosStorage, storage),
        Effect.provideService(Transport.PeerNetwork, network.network)
      )
      logs.set(nodeId, log)
    }
    return { logs, dir, network }
  })
