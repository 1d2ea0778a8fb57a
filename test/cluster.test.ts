import { describe, expect, it } from "@effect/vitest"
import { Result, Schema } from "effect"
import { Packr } from "msgpackr"
import {
  applyEntry,
  ClusterEntry as ClusterEntrySchema,
  applyValue,
  type BinlogTxn,
  type ClusterEntry,
  type ClusterStateData,
  decodeEntry,
  encodeEntry,
  initialClusterState,
  type Outcome,
  txnDigest
} from "../src/domain/cluster/cluster.js"
import { formatGtid, type Gtid, gtidEquals, parseGtid } from "../src/domain/cluster/gtid.js"
import { bytesAsText } from "./support/bytes.js"
import { Rng } from "./support/sim.js"

const txn = (seq: number, server = 1, body = `t${seq}`): BinlogTxn => ({
  gtid: { domain: 0, server, seq },
  events: new Uint8Array(Buffer.from(body))
})

const run = (entries: ReadonlyArray<ClusterEntry>, members = [1, 2, 3]) => {
  let state = initialClusterState(members)
  const outcomes: Array<Outcome> = []
  const states: Array<ClusterStateData> = [state]
  for (const e of entries) {
    const [next, outcome] = applyEntry(state, e)
    outcomes.push(outcome)
    states.push(next)
    state = next
  }
  return { state, outcomes, states }
}

describe("GTID", () => {
  it("parses and formats D-S-N", () => {
    expect(parseGtid("0-12-345")).toEqual({ domain: 0, server: 12, seq: 345 })
    expect(formatGtid({ domain: 1, server: 2, seq: 3 })).toBe("1-2-3")
    for (const bad of ["", "0-1", "a-b-c", "0-1-0", "0-1--2", "0-99999999999-1"]) expect(parseGtid(bad)).toBeUndefined()
  })
})

describe("cluster state machine", () => {
  it("applies the rules of docs/architecture.md, State machine", () => {
    const { state, outcomes } = run([
      { _tag: "Binlog", node: 1, epoch: 0, prevGtid: null, txns: [txn(1)] }, // no master yet
      { _tag: "MasterLease", node: 1, basedOnVersion: 0, leaseMs: 3000, proposalId: 1 },
      { _tag: "MasterLease", node: 2, basedOnVersion: 0, leaseMs: 3000, proposalId: 1 }, // stale version
      { _tag: "Binlog", node: 1, epoch: 1, prevGtid: null, txns: [txn(1), txn(2)] },
      { _tag: "Binlog", node: 1, epoch: 1, prevGtid: { domain: 0, server: 1, seq: 1 }, txns: [txn(3)] }, // wrong prev
      { _tag: "Binlog", node: 1, epoch: 1, prevGtid: { domain: 0, server: 1, seq: 2 }, txns: [txn(4)] }, // gap
      { _tag: "Binlog", node: 1, epoch: 1, prevGtid: null, txns: [txn(1), txn(2)] }, // retry, same content
      { _tag: "Binlog", node: 1, epoch: 1, prevGtid: null, txns: [txn(1), txn(2, 1, "other")] }, // same GTID, other content
      { _tag: "MasterLease", node: 1, basedOnVersion: 1, leaseMs: 3000, proposalId: 1 }, // renewal: same epoch
      { _tag: "MasterLease", node: 2, basedOnVersion: 2, leaseMs: 3000, proposalId: 1 }, // new master: epoch 2
      { _tag: "Binlog", node: 1, epoch: 1, prevGtid: { domain: 0, server: 1, seq: 2 }, txns: [txn(3)] }, // old master
      { _tag: "Binlog", node: 2, epoch: 1, prevGtid: { domain: 0, server: 1, seq: 2 }, txns: [txn(3, 2)] }, // stale epoch
      { _tag: "Binlog", node: 2, epoch: 2, prevGtid: { domain: 0, server: 1, seq: 2 }, txns: [txn(3, 2)] },
      { _tag: "Noop", node: 3, nonce: 7 }
    ])
    expect(outcomes.map((o) => (o._tag === "Rejected" ? o.reason._tag : o._tag))).toEqual([
      "NotMaster",
      "Accepted",
      "StaleMasterVersion",
      "Accepted",
      "GtidMismatch",
      "GtidGap",
      "AlreadyAccepted",
      "GtidConflict",
      "Accepted",
      "Accepted",
      "NotMaster",
      "StaleEpoch",
      "Accepted",
      "Accepted"
    ])
    expect(state).toMatchObject({ master: 2, masterVersion: 3, epoch: 2, lastGtid: { domain: 0, server: 2, seq: 3 } })
  })

  it("round-trips entries through their encoding and rejects malformed values without a change", () => {
    const entry: ClusterEntry = { _tag: "Binlog", node: 1, epoch: 4, prevGtid: null, txns: [txn(1), txn(2)] }
    const decoded = decodeEntry(encodeEntry(entry))
    expect(decoded._tag).toBe("Binlog")
    expect(bytesAsText(decoded)).toEqual(bytesAsText(entry))
    const state = initialClusterState([1])
    for (const bad of [new Uint8Array([0xc1]), new Uint8Array(Buffer.from("hello")), encodeEntry({ _tag: "Noop", node: 1, nonce: 1 }).subarray(1)]) {
      const [next, outcome] = applyValue(state, bad)
      expect(next).toBe(state)
      expect(outcome).toMatchObject({ _tag: "Rejected", reason: { _tag: "Malformed" } })
    }
  })

  /** Random entries that are often almost right: the interesting rejections sit next to acceptances. */
  const randomEntries = (rng: Rng, count: number, log: Array<ClusterEntry>): Array<ClusterEntry> => {
    let state = initialClusterState([1, 2, 3])
    const out: Array<ClusterEntry> = []
    for (let i = 0; i < count; i++) {
      const r = rng.next()
      let e: ClusterEntry
      if (r < 0.2) {
        e = { _tag: "MasterLease", node: rng.int(1, 3), basedOnVersion: state.masterVersion - rng.int(0, 1), leaseMs: 1000, proposalId: i }
      } else if (r < 0.3 && log.length > 0) {
        e = log[rng.int(0, log.length - 1)]! // a retry of some earlier entry
      } else if (r < 0.9) {
        const node = rng.next() < 0.8 ? (state.master ?? 1) : rng.int(1, 3)
        const epoch = state.epoch - (rng.next() < 0.15 ? 1 : 0)
        const last = state.lastGtid
        const prev: Gtid | null = rng.next() < 0.15 && last !== null ? { ...last, seq: Math.max(1, last.seq - 1) } : last
        let seq = (prev?.seq ?? 0) + (rng.next() < 0.1 ? rng.int(0, 2) : 1)
        const txns: Array<BinlogTxn> = []
        for (let k = rng.int(1, 3); k > 0; k--) {
          txns.push(txn(Math.max(1, seq), node, rng.next() < 0.1 ? `x${rng.int(0, 3)}` : `t${seq}`))
          seq += rng.next() < 0.05 ? 2 : 1
        }
        e = { _tag: "Binlog", node, epoch, prevGtid: prev, txns }
      } else {
        e = { _tag: "Noop", node: rng.int(1, 3), nonce: i }
      }
      out.push(e)
      const [next, outcome] = applyEntry(state, e)
      if (outcome._tag === "Accepted" && e._tag === "Binlog") log.push(e)
      state = next
    }
    return out
  }

  it("decodes Binlog entries by hand exactly as the schema does, also mangled ones (seeded)", () => {
    const packr = new Packr({ useRecords: false, moreTypes: false, structuredClone: false, mapsAsObjects: true })
    const bySchema = Schema.decodeUnknownResult(ClusterEntrySchema)
    const rng = new Rng(7)
    const pick = <A>(xs: ReadonlyArray<A>): A => xs[rng.int(0, xs.length - 1)]!
    const odd = [null, -1, 1.5, 2 ** 33, "1", true, {}, [], new Uint8Array(2), undefined]
    let mangled = 0
    for (let i = 0; i < 3000; i++) {
      const base: Record<string, unknown> = {
        _tag: "Binlog",
        node: rng.int(0, 5),
        epoch: rng.int(0, 9),
        prevGtid: rng.next() < 0.2 ? null : { domain: 0, server: rng.int(1, 9), seq: rng.int(1, 99) },
        txns: Array.from({ length: rng.int(1, 3) }, (_, k) => ({
          gtid: { domain: 0, server: 1, seq: k + 1 },
          events: new Uint8Array(rng.int(0, 8)),
          ...(rng.next() < 0.5 ? { digest: `1.0.${rng.int(0, 1e6)}` } : {})
        }))
      }
      if (rng.next() < 0.6) {
        mangled++
        const t = (base.txns as Array<Record<string, unknown>>)[0]!
        const where = rng.int(0, 8)
        if (where === 0) base.node = pick(odd)
        else if (where === 1) base.epoch = pick(odd)
        else if (where === 2) base.prevGtid = pick([...odd, { domain: 0, server: 1, seq: 0 }, { domain: -1, server: 1, seq: 1 }])
        else if (where === 3) base.txns = pick([...odd, []])
        else if (where === 4) t.events = pick(odd)
        else if (where === 5) t.gtid = pick([...odd, { domain: 0, server: 2 ** 32, seq: 1 }])
        else if (where === 6) delete base.epoch
        else if (where === 7) t.digest = pick(odd)
        else base._tag = pick(["Binlog ", "Noop", 1])
      }
      const bytes = packr.pack(base)
      const expected = bySchema(packr.unpack(bytes))
      const got = decodeEntry(bytes)
      if (Result.isSuccess(expected)) expect(bytesAsText(got)).toEqual(bytesAsText(expected.success))
      else expect(got._tag).toBe("Malformed")
    }
    expect(mangled).toBeGreaterThan(1000)
  })

  it("digests a transaction by every byte (SHA-256), its server and its parts: a retry is told from another transaction", () => {
    const events = new Uint8Array(Buffer.from("a transaction's binlog events, any bytes at all"))
    const t = { gtid: { domain: 0, server: 1, seq: 1 }, events }
    const same = txnDigest(t)
    expect(txnDigest({ ...t, events: Uint8Array.from(events) })).toBe(same)
    for (let at = 0; at < events.length; at++) {
      const changed = Uint8Array.from(events)
      changed[at] = changed[at]! ^ 0x01
      expect(txnDigest({ ...t, events: changed })).not.toBe(same)
    }
    expect(txnDigest({ ...t, gtid: { ...t.gtid, server: 2 } })).not.toBe(same)
    expect(txnDigest({ ...t, parts: 3 })).not.toBe(same)
    // A state written before SHA-256 holds numeric digests: a retry against one is refused, never ACKed.
    const [state] = applyEntry(
      applyEntry(initialClusterState([1, 2, 3]), { _tag: "MasterLease", node: 1, basedOnVersion: 0, leaseMs: 2000, proposalId: 1 })[0],
      { _tag: "Binlog", node: 1, epoch: 1, prevGtid: null, txns: [t] }
    )
    const old = { ...state, recent: state.recent.map(([seq]) => [seq, 12345] as const) }
    expect(applyEntry(old, { _tag: "Binlog", node: 1, epoch: 1, prevGtid: null, txns: [t] })[1]).toMatchObject({ _tag: "Rejected", reason: { _tag: "GtidConflict" } })
    expect(applyEntry(state, { _tag: "Binlog", node: 1, epoch: 1, prevGtid: null, txns: [t] })[1]._tag).toBe("AlreadyAccepted")
  })

  it("keeps the digest a transaction carries (its master's), and tells retries by it", () => {
    const t = { gtid: { domain: 0, server: 1, seq: 1 }, events: new Uint8Array(Buffer.from("one transaction")) }
    const leased = applyEntry(initialClusterState([1, 2, 3]), { _tag: "MasterLease", node: 1, basedOnVersion: 0, leaseMs: 2000, proposalId: 1 })[0]
    const binlog = (txn: typeof t & { digest?: string }) => ({ _tag: "Binlog" as const, node: 1, epoch: 1, prevGtid: null, txns: [txn] })
    // Carried: stored as it is, not computed again.
    const [carried, outcome] = applyEntry(leased, binlog({ ...t, digest: "carried" }))
    expect(outcome._tag).toBe("Accepted")
    expect(carried.recent).toEqual([[1, "carried"]])
    expect(applyEntry(carried, binlog({ ...t, digest: "carried" }))[1]._tag).toBe("AlreadyAccepted")
    expect(applyEntry(carried, binlog({ ...t, digest: "another" }))[1]).toMatchObject({ _tag: "Rejected", reason: { _tag: "GtidConflict" } })
    // A master's digest is txnDigest: an entry from before (none carried) and a retry that carries it agree.
    const [computed] = applyEntry(leased, binlog(t))
    expect(computed.recent).toEqual([[1, txnDigest(t)]])
    expect(applyEntry(computed, binlog({ ...t, digest: txnDigest(t) }))[1]._tag).toBe("AlreadyAccepted")
  })

  it("holds its invariants over random entry sequences (seeded)", () => {
    const failures: Array<string> = []
    let accepted = 0
    let rejectedBinlogs = 0
    let retries = 0
    for (let seed = 1; seed <= 500; seed++) {
      const entries = randomEntries(new Rng(seed), 200, [])
      const a = run(entries)
      const b = run(entries)
      const fail = (m: string) => failures.push(`seed ${seed}: ${m}`)
      if (JSON.stringify(a.state) !== JSON.stringify(b.state) || JSON.stringify(a.outcomes) !== JSON.stringify(b.outcomes)) {
        fail("apply is not deterministic")
      }
      entries.forEach((e, i) => {
        const before = a.states[i]!
        const after = a.states[i + 1]!
        const o = a.outcomes[i]!
        if (o._tag !== "Accepted" && after !== before) fail(`entry ${i}: ${o._tag} changed the state`)
        if (e._tag === "Binlog") {
          if (o._tag === "Accepted") {
            accepted++
            if (e.epoch !== before.epoch) fail(`entry ${i}: Binlog from epoch ${e.epoch} accepted in epoch ${before.epoch}`)
            if (!gtidEquals(e.prevGtid, before.lastGtid)) fail(`entry ${i}: Binlog with a wrong prevGtid accepted`)
            if (e.node !== before.master) fail(`entry ${i}: Binlog from a non-master accepted`)
            const seqs = [before.lastGtid?.seq ?? e.txns[0]!.gtid.seq - 1, ...e.txns.map((t) => t.gtid.seq)]
            if (seqs.some((s, k) => k > 0 && s !== seqs[k - 1]! + 1)) fail(`entry ${i}: non-consecutive GTIDs accepted`)
            if (!gtidEquals(after.lastGtid, e.txns[e.txns.length - 1]!.gtid)) fail(`entry ${i}: lastGtid not the entry's last`)
          } else if (o._tag === "AlreadyAccepted") {
            retries++
            const recent = new Map(before.recent.map(([s, d]) => [s, d]))
            if (!e.txns.every((t) => recent.get(t.gtid.seq) === txnDigest(t))) fail(`entry ${i}: AlreadyAccepted with other content`)
          } else rejectedBinlogs++
        } else if (after.lastGtid !== before.lastGtid) fail(`entry ${i}: ${e._tag} moved lastGtid`)
        if (e._tag === "MasterLease") {
          const ok = e.basedOnVersion === before.masterVersion
          if ((o._tag === "Accepted") !== ok) fail(`entry ${i}: MasterLease optimistic lock broken`)
          if (ok && (after.epoch !== before.epoch) !== (e.node !== before.master)) fail(`entry ${i}: epoch rule broken`)
        }
        if ((after.lastGtid?.seq ?? 0) < (before.lastGtid?.seq ?? 0)) fail(`entry ${i}: lastGtid moved back`)
      })
      if (failures.length > 0) break
    }
    if (failures.length > 0) console.error(failures.slice(0, 10).join("\n"))
    expect(failures).toEqual([])
    // The generator must reach every branch, or the properties say little.
    expect(accepted).toBeGreaterThan(1000)
    expect(rejectedBinlogs).toBeGreaterThan(1000)
    expect(retries).toBeGreaterThan(100)
  })
})

describe("large transactions in parts", () => {
  const lease = (node: number, basedOnVersion: number): ClusterEntry => ({ _tag: "MasterLease", node, basedOnVersion, leaseMs: 3000, proposalId: 1 })
  const g = (seq: number): Gtid => ({ domain: 0, server: 1, seq })
  const part = (seq: number, n: number, epoch = 1, node = 1): ClusterEntry => ({
    _tag: "BinlogPart",
    node,
    epoch,
    gtid: g(seq),
    part: n,
    bytes: new Uint8Array([seq, n])
  })
  const last = (seq: number, parts: number, prev: number | null, epoch = 1): ClusterEntry => ({
    _tag: "Binlog",
    node: 1,
    epoch,
    prevGtid: prev === null ? null : g(prev),
    txns: [{ gtid: g(seq), events: new Uint8Array([seq, 255]), parts }]
  })
  const tags = (outcomes: ReadonlyArray<Outcome>) => outcomes.map((o) => (o._tag === "Rejected" ? o.reason._tag : o._tag))

  it("accepts a transaction whose parts come in order, then the entry completing it, and records where the parts are", () => {
    let state = run([lease(1, 0)]).state
    const outcomes: Array<Outcome> = []
    const entries = [part(1, 0), part(1, 1), part(1, 2), last(1, 3, null)]
    entries.forEach((e, i) => {
      const [next, outcome] = applyEntry(state, e, [10 + i, 0])
      outcomes.push(outcome)
      if (i === 2) expect(next.partial?.at).toEqual([[10, 0], [11, 0], [12, 0]])
      state = next
    })
    expect(tags(outcomes)).toEqual(["Accepted", "Accepted", "Accepted", "Accepted"])
    expect(state.lastGtid).toEqual(g(1))
    expect(state.partial).toBeNull()
    // The completing entry again (a retry whose first try was chosen): recognised; its parts again too.
    expect(tags([applyEntry(state, last(1, 3, null))[1], applyEntry(state, part(1, 0))[1]])).toEqual(["AlreadyAccepted", "AlreadyAccepted"])
  })

  it("refuses parts out of order, a completion with another count, and parts from anyone but the master", () => {
    const { outcomes, state } = run([
      lease(1, 0),
      part(1, 1), // no part 0
      part(1, 0),
      part(1, 0), // part 0 again: the transaction starts over (a capture that reconnected)
      part(1, 2), // part 1 missing
      part(1, 1),
      part(1, 1), // the last part again: a retry whose first try was chosen
      part(1, 2),
      part(1, 1), // an earlier part again (parts are pipelined): a retry, nothing changes
      last(1, 4, null), // only 3 parts
      part(1, 2, 1, 2), // not the master
      part(1, 2, 0), // stale epoch
      { _tag: "Binlog", node: 1, epoch: 1, prevGtid: null, txns: [txn(1), { ...txn(2), parts: 1 }] }, // parts not first
      last(1, 3, null),
      part(3, 0) // does not follow lastGtid
    ])
    expect(tags(outcomes)).toEqual([
      "Accepted",
      "PartOutOfOrder",
      "Accepted",
      "Accepted",
      "PartOutOfOrder",
      "Accepted",
      "AlreadyAccepted",
      "Accepted",
      "AlreadyAccepted",
      "PartOutOfOrder",
      "NotMaster",
      "StaleEpoch",
      "Malformed",
      "Accepted",
      "GtidGap"
    ])
    expect(state.lastGtid).toEqual(g(1))
  })

  it("drops an unfinished transaction: a new master, a new part 0, or a whole transaction accepted meanwhile", () => {
    const { outcomes } = run([
      lease(1, 0),
      part(1, 0),
      part(1, 1),
      lease(2, 1), // master 2, epoch 2: node 1's parts are gone
      lease(1, 2), // node 1 again, epoch 3
      last(1, 2, null, 3),
      part(1, 0, 3),
      part(1, 1, 3),
      part(1, 0, 3), // starts over
      { _tag: "Binlog", node: 1, epoch: 3, prevGtid: null, txns: [txn(1)] }, // whole after all
      part(2, 0, 3),
      last(2, 1, 1, 3)
    ])
    expect(tags(outcomes)).toEqual([
      "Accepted",
      "Accepted",
      "Accepted",
      "Accepted",
      "Accepted",
      "PartOutOfOrder",
      "Accepted",
      "Accepted",
      "Accepted",
      "Accepted",
      "Accepted",
      "Accepted"
    ])
    // The whole transaction dropped the parts: a completion for them now is refused.
    const after = run([lease(1, 0), part(1, 0), part(1, 1), { _tag: "Binlog", node: 1, epoch: 1, prevGtid: null, txns: [txn(1)] }])
    expect(after.state.partial).toBeNull()
    expect(tags([applyEntry(after.state, last(2, 2, 1))[1]])).toEqual(["PartOutOfOrder"])
  })

  it("round-trips a part and a completing entry through the value encoding", () => {
    for (const e of [part(7, 3), last(7, 4, 6)]) expect(bytesAsText(decodeEntry(encodeEntry(e)))).toEqual(bytesAsText(e))
  })
})
