import { describe, expect, it } from "@effect/vitest"
import { applyEntry, type ClusterEntry, encodeEntry, initialClusterState, MAX_LEASE_MS, membershipOfValue } from "../src/domain/cluster/cluster.js"
import { CONFIG_WINDOW } from "../src/domain/paxos/core.js"
import { decide, defaultLeaseConfig, holdsLease, initialLeaseView, onApplied, onOutcome, onProposed, onResigning, onStalled, onState } from "../src/domain/cluster/lease.js"
import { localPosition } from "../src/services/database/NodeDatabase.js"
import { EventSplitter, splitEvents } from "../src/services/binlog/ChosenBinlog.js"

const lease = (node: number, basedOnVersion: number, proposalId = 7): ClusterEntry => ({ _tag: "MasterLease", node, basedOnVersion, leaseMs: 2000, proposalId })

describe("Resign: a master gives its lease up early", () => {
  it("is accepted only from the current master at the current version; the next master gets a new epoch", () => {
    let [s] = applyEntry(initialClusterState([1, 2, 3]), lease(1, 0))
    expect([s.master, s.masterVersion, s.epoch]).toEqual([1, 1, 1])
    // Stale version or another node: rejected, nothing changes.
    expect(applyEntry(s, { _tag: "Resign", node: 1, basedOnVersion: 0 })[1]._tag).toBe("Rejected")
    expect(applyEntry(s, { _tag: "Resign", node: 2, basedOnVersion: 1 })[1]).toMatchObject({ _tag: "Rejected", reason: { _tag: "NotMaster" } })
    const [resigned, outcome] = applyEntry(s, { _tag: "Resign", node: 1, basedOnVersion: 1 })
    expect(outcome._tag).toBe("Accepted")
    expect([resigned.master, resigned.masterVersion, resigned.epoch]).toEqual([null, 2, 1])
    // Even the same node comes back under a new epoch: its old Binlog entries are stale.
    ;[s] = applyEntry(resigned, lease(1, 2))
    expect([s.master, s.epoch]).toEqual([1, 2])
  })

  it("the holder resigns when not ready; others may run at once after it", () => {
    const c = defaultLeaseConfig(1, 2000)
    let [state] = applyEntry(initialClusterState([1, 2, 3]), lease(1, 0))
    let v = onProposed(initialLeaseView(initialClusterState([1, 2, 3]), 0), 0, 7, 0)
    v = onState(c, v, state, 5)
    v = onApplied(c, v, lease(1, 0), { _tag: "Accepted" }, 5)
    expect(decide(c, v, 100, true, 0)._tag).toBe("None")
    expect(decide(c, v, 100, false, 0)).toEqual({ _tag: "Resign", basedOnVersion: 1 })
    // Proposing the resignation ends holding at once (the next master may be elected before
    // this node applies it); with no outcome in time it is sent again.
    expect(holdsLease(c, v, 100)).toBe(true)
    const resigning = onResigning(c, v, 1, 100)
    expect(resigning.heldFrom).toBeUndefined()
    expect(holdsLease(c, resigning, 101)).toBe(false)
    expect(decide(c, resigning, 101, false, 0)._tag).toBe("None")
    expect(decide(c, resigning, 100 + c.proposeTimeoutMs, true, 0)).toEqual({ _tag: "Resign", basedOnVersion: 1 })
    // Another node learns the resignation: no master, it need not wait the lease out.
    const c2 = defaultLeaseConfig(2, 2000)
    let v2 = onState(c2, initialLeaseView(initialClusterState([1, 2, 3]), 0), state, 10)
    expect(decide(c2, v2, 200, true, 0)._tag).toBe("None")
    ;[state] = applyEntry(state, { _tag: "Resign", node: 1, basedOnVersion: 1 })
    v2 = onState(c2, v2, state, 210)
    expect(decide(c2, v2, 211, true, 0)).toEqual({ _tag: "Propose", basedOnVersion: 2 })
  })
})

describe("Resign gives the lease up locally at once", () => {
  it("a node that resigned never holds again in that term: not when ready again, not when a late renewal is chosen, not after a failed outcome", () => {
    const c = defaultLeaseConfig(1, 2000)
    const members = [1, 2, 3]
    let [state] = applyEntry(initialClusterState(members), lease(1, 0))
    let v = onProposed(initialLeaseView(initialClusterState(members), 0), 0, 7, 0)
    v = onState(c, v, state, 5)
    v = onApplied(c, v, lease(1, 0), { _tag: "Accepted" }, 5)
    expect(holdsLease(c, v, 10)).toBe(true)
    // A renewal goes out, gets no outcome in time, and the database stops serving: resign.
    v = onProposed(v, 1, 8, c.renewEveryMs)
    const t = c.renewEveryMs + c.proposeTimeoutMs
    expect(decide(c, v, t, false, 0)).toEqual({ _tag: "Resign", basedOnVersion: 1 })
    v = onResigning(c, v, 1, t)
    expect(v.heldFrom).toBeUndefined()
    for (let at = t; at < 2000; at += 50) expect(holdsLease(c, v, at)).toBe(false)
    // The abandoned renewal is chosen after all: our record again, but not our lease.
    ;[state] = applyEntry(state, lease(1, 1, 8))
    v = onState(c, v, state, t + 10)
    v = onApplied(c, v, lease(1, 1, 8), { _tag: "Accepted" }, t + 10)
    v = onOutcome(c, v, "failed", t + 20)
    expect(holdsLease(c, v, t + 30)).toBe(false)
    // Ready again within the would-be lease: it re-sends the Resign (on the new version), never renews.
    const later = t + 30
    expect(decide(c, v, later, true, 0)).toEqual({ _tag: "Resign", basedOnVersion: 2 })
    // The Resign is chosen: no master, and holding needs a new MasterLease of ours (a new epoch).
    ;[state] = applyEntry(state, { _tag: "Resign", node: 1, basedOnVersion: 2 })
    v = onState(c, v, state, later + 10)
    expect([v.master, v.resignUntil, holdsLease(c, v, later + 10)]).toEqual([null, undefined, false])
    expect(decide(c, v, later + 20, true, 0)).toEqual({ _tag: "Propose", basedOnVersion: 3 })
  })
})

describe("node database helpers", () => {
  it("reads the cluster's domain out of gtid_binlog_pos and flags other domains", () => {
    expect(localPosition("", 0)).toEqual({ gtid: null, foreign: [] })
    expect(localPosition("0-1000003-42", 0)).toEqual({ gtid: { domain: 0, server: 1000003, seq: 42 }, foreign: [] })
    expect(localPosition("0-1-5,7-2-3", 0)).toEqual({ gtid: { domain: 0, server: 1, seq: 5 }, foreign: ["7-2-3"] })
  })

  it("splits a transaction's events by their header lengths and stops at a truncated one", () => {
    const event = (length: number, fill: number) => {
      const b = new Uint8Array(length).fill(fill)
      new DataView(b.buffer).setUint32(9, length, true)
      return b
    }
    const a = event(25, 1)
    const b = event(40, 2)
    const joined = new Uint8Array([...a, ...b])
    expect(splitEvents(joined).map((e) => e.length)).toEqual([25, 40])
    expect(splitEvents(joined.subarray(0, 50)).map((e) => e.length)).toEqual([25])
  })

  it("splits events that lie across chunks (a large transaction's parts) exactly as when joined, at every cut", () => {
    const event = (length: number, fill: number) => {
      const b = new Uint8Array(length).fill(fill)
      new DataView(b.buffer).setUint32(9, length, true)
      return b
    }
    const joined = new Uint8Array([...event(25, 1), ...event(40, 2), ...event(19, 3), ...event(30, 4)])
    const expected = splitEvents(joined).map((e) => [...e])
    const acrossChunks = (chunks: ReadonlyArray<Uint8Array>) => {
      const splitter = new EventSplitter()
      return { events: chunks.flatMap((c) => [...splitter.push(c)]), rest: splitter.leftover }
    }
    for (let i = 0; i <= joined.length; i++) {
      for (const j of [i, i + 1, i + 7, i + 23]) {
        if (j > joined.length) continue
        const chunks = [joined.slice(0, i), joined.slice(i, j), joined.slice(j)]
        expect(acrossChunks(chunks).events.map((e) => [...e]), `cut at ${i}, ${j}`).toEqual(expected)
      }
    }
    // A truncated last event is left out, as when joined, and is the rest a later chunk continues.
    expect(acrossChunks([joined.slice(0, 30), joined.slice(30, 100)]).events.map((e) => e.length)).toEqual([25, 40, 19])
    const first = acrossChunks([joined.slice(0, 30), joined.slice(30, 100)])
    expect([...first.rest]).toEqual([...joined.slice(84, 100)])
    const second = acrossChunks([first.rest, joined.slice(100)])
    expect(second.events.map((e) => e.length)).toEqual([30])
    expect(second.rest.length).toBe(0)
  })
})

describe("lease length from the master record", () => {
  it("a node configured with a shorter lease still waits out the holder's longer one", () => {
    const short = defaultLeaseConfig(2, 1_000)
    const [state] = applyEntry(initialClusterState([1, 2, 3]), { _tag: "MasterLease", node: 1, basedOnVersion: 0, leaseMs: 5_000, proposalId: 1 })
    const v = onState(short, initialLeaseView(initialClusterState([1, 2, 3]), 0), state, 100)
    expect(decide(short, v, 1_200, true, 0)._tag).toBe("None")
    expect(decide(short, v, 5_050, true, 0)._tag).toBe("None")
    expect(decide(short, v, 5_101, true, 0)).toEqual({ _tag: "Propose", basedOnVersion: 1 })
  })
})

describe("a node that was stopped", () => {
  it("waits out another node's lease in full after it resumes, instead of running at once", () => {
    const c = defaultLeaseConfig(2, 2000)
    const [state] = applyEntry(initialClusterState([1, 2, 3]), lease(1, 0))
    const v = onState(c, initialLeaseView(initialClusterState([1, 2, 3]), 0), state, 10)
    // Resumed 30 s later: by its clock the lease lapsed long ago, but it saw no renewals.
    const resumed = 30_010
    expect(decide(c, v, resumed, true, 0)._tag).toBe("Propose")
    const stalled = onStalled(c, v, resumed)
    expect(decide(c, stalled, resumed, true, 0)._tag).toBe("None")
    expect(decide(c, stalled, resumed + 1_999, true, 0)._tag).toBe("None")
    expect(decide(c, stalled, resumed + 2_000, true, 0)._tag).toBe("Propose")
    // No master, or this node's own record: nothing to wait out.
    const none = onState(c, v, applyEntry(state, { _tag: "Resign", node: 1, basedOnVersion: 1 })[0], 20)
    expect(onStalled(c, none, resumed)).toBe(none)
  })
})

describe("membership in the state machine", () => {
  const member = (nodeId: number, voter: boolean) => ({ nodeId, host: "127.0.0.1", port: 7000 + nodeId, adminPort: 7100 + nodeId, voter })
  it("a Membership sets the members and the Paxos member set from CONFIG_WINDOW on; a MasterLease for a node that does not vote is refused", () => {
    const members = [member(1, true), member(2, true), member(4, false)]
    const [s, outcome] = applyEntry(initialClusterState([1, 2, 3]), { _tag: "Membership", members }, [40, 0])
    expect(outcome._tag).toBe("Accepted")
    expect(s.members).toEqual([1, 2, 4])
    expect(s.configs).toEqual([{ from: 0, voters: [1, 2, 3], learners: [] }, { from: 40 + CONFIG_WINDOW, voters: [1, 2], learners: [4] }])
    expect(applyEntry(s, lease(4, 0))[1]).toMatchObject({ _tag: "Rejected", reason: { _tag: "NotMember", node: 4 } })
    expect(applyEntry(s, lease(3, 0))[1]).toMatchObject({ _tag: "Rejected", reason: { _tag: "NotMember", node: 3 } })
    expect(applyEntry(s, lease(2, 0))[1]._tag).toBe("Accepted")
    // A lease longer than the cap is refused (a forged one would stop elections that long).
    const long = { _tag: "MasterLease" as const, node: 2, basedOnVersion: 0, leaseMs: MAX_LEASE_MS + 1, proposalId: 9 }
    expect(applyEntry(s, long)[1]).toMatchObject({ _tag: "Rejected", reason: { _tag: "LeaseTooLong", max: MAX_LEASE_MS } })
    expect(applyEntry(s, { ...long, leaseMs: MAX_LEASE_MS })[1]._tag).toBe("Accepted")
  })

  it("classifies chosen values: only a Membership entry changes the member set", () => {
    const members = [member(1, true), member(5, false)]
    expect(membershipOfValue(encodeEntry({ _tag: "Membership", members }))).toEqual({ voters: [1], learners: [5] })
    expect(membershipOfValue(encodeEntry(lease(1, 0)))).toBeUndefined()
    expect(membershipOfValue(encodeEntry({ _tag: "Noop", node: 1, nonce: 5 }))).toBeUndefined()
    expect(membershipOfValue(new Uint8Array([1, 2, 3]))).toBeUndefined()
  })
})
