import { describe, expect, it } from "@effect/vitest"
import { copyProgress, rebuildProgress } from "../src/domain/cluster/databaseRole.js"
import { type NodeStatus, renderStatusTable } from "../src/domain/cluster/nodeStatus.js"

/** The fields the table reads; the rest of a status does not matter here. */
const node = (nodeId: number, role: string, database: Partial<NonNullable<NodeStatus["database"]>>): NodeStatus =>
  ({
    nodeId,
    role,
    master: 1,
    epoch: 2,
    leaseRemainingMs: 900,
    paxos: { lastChosenInstance: 41 },
    appliedInstance: 42,
    lastGtid: "0-1-100",
    database: { role: "replica", localGtid: "0-1-40", lag: 60, up: true, diverged: null, replicationError: null, rebuild: null, ...database },
    members: [{ nodeId: 1, reachable: true }, { nodeId: 2, reachable: true }, { nodeId: 3, reachable: true }]
  }) as unknown as NodeStatus

describe("status table", () => {
  it("shows a rebuilding node's progress in its db column and a line below; a diverged one as DIVERGED", () => {
    const rebuild = { reason: "requested by an operator", elapsedS: 4, appliedTxns: 40, targetTxns: 100, percent: 40, txnsPerS: 10, etaS: 6 }
    const table = renderStatusTable([
      { nodeId: 1, address: "a:1", status: node(1, "master", { role: "master", lag: 0 }) },
      { nodeId: 2, address: "a:2", status: node(2, "replica", { rebuild }) },
      { nodeId: 3, address: "a:3", status: node(3, "replica", { diverged: "extra 0-3-7" }) }
    ])
    const rows = table.split("\n")
    expect(rows[2]).toMatch(/rebuild 40%/)
    expect(rows[3]).toMatch(/DIVERGED/)
    expect(table).toContain("master: node 1")
    expect(table).toContain("node 2 rebuilding (requested by an operator): 40 of 100 transactions, 10/s, about 6 s left")
    expect(table).toContain("node 3 DIVERGED: extra 0-3-7")
  })

  it("shows a rebuild's copy from a peer in MB, with the donor, the rate and the time left", () => {
    const rebuild = copyProgress({ reason: "diverged: extra", donor: 3, elapsedMs: 2_000, copiedBytes: 50 * 1024 * 1024, totalBytes: 200 * 1024 * 1024 })
    expect(rebuild).toMatchObject({ phase: "copy", copiedMb: 50, totalMb: 200, percent: 25, mbPerS: 25, etaS: 6 })
    const table = renderStatusTable([{ nodeId: 2, address: "a:2", status: node(2, "replica", { rebuild }) }])
    expect(table.split("\n")[1]).toMatch(/rebuild 25%/)
    expect(table).toContain("node 2 rebuilding (diverged: extra): copying from node 3, 50 of 200 MB, 25 MB/s, about 6 s left")
  })

  it("counts a replay after a copy from the copy's position", () => {
    expect(rebuildProgress({ reason: "r", elapsedMs: 1_000, applied: 30, target: 40 })).toMatchObject({ phase: "replay", percent: 75, etaS: 0 })
  })
})
