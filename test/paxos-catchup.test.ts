import { describe, expect, it } from "@effect/vitest"
import { defaultPaxosConfig, emptyDurableState, type Outputs, PaxosNode } from "../src/domain/paxos/core.js"
import type { ChosenEntry, PaxosMessage } from "../src/domain/paxos/messages.js"

/**
 * Catch-up pacing of the pure core, step by step: a node far behind asks for the next slice
 * in the step that takes one in (PaxosLog sends it before the state machine runs), never
 * while its writes are behind, and once they caught up only if no request is on its way.
 */
const LEADER = 2
const PEER_HEAD = 50 // the peer's chosen prefix

const entries = (from: number, to: number): Array<ChosenEntry> =>
  Array.from({ length: to - from }, (_, k) => ({
    instance: from + k,
    value: { proposer: LEADER, round: 1, seq: from + k, values: [new Uint8Array([from + k])] }
  }))

const requests = (out: Outputs) =>
  out.send.flatMap((s) => (s.message._tag === "CatchupRequest" ? [{ to: s.to, from: s.message.from }] : []))

const behind = () => {
  let now = 1_000
  const node = new PaxosNode(defaultPaxosConfig(1, [1, 2, 3], 7), emptyDurableState)
  const receive = (message: PaxosMessage) => node.step({ _tag: "Receive", from: LEADER, message }, now)
  const status = receive({ _tag: "Status", chosenUpTo: PEER_HEAD, maxChosen: PEER_HEAD - 1, leader: { round: 1, node: LEADER } })
  const first = [...requests(status), ...requests(node.step({ _tag: "Tick" }, (now += 1)))]
  return { node, receive, first, at: () => (now += 1) }
}

describe("Paxos catch-up pacing", () => {
  it("asks for the next slice in the step that receives one, and stops at the peer's head", () => {
    const { receive, first } = behind()
    expect(first).toEqual([{ to: LEADER, from: 0 }])
    const one = receive({ _tag: "CatchupReply", entries: entries(0, 20) })
    expect(requests(one)).toEqual([{ to: LEADER, from: 20 }])
    expect(one.chosen.map((e) => e.instance)).toEqual(entries(0, 20).map((e) => e.instance))
    const two = receive({ _tag: "CatchupReply", entries: entries(20, PEER_HEAD) })
    expect(two.chosen.length).toBe(PEER_HEAD - 20)
    // Nothing beyond the peer's head to ask for.
    expect(requests(two)).toEqual([])
  })

  it("asks nothing while its writes are behind, and asks at once when they caught up", () => {
    const { node, receive, first, at } = behind()
    expect(first).toEqual([{ to: LEADER, from: 0 }])
    expect(requests(node.step({ _tag: "WriteBacklog", over: true }, at()))).toEqual([])
    const one = receive({ _tag: "CatchupReply", entries: entries(0, 20) })
    expect(one.chosen.length).toBe(20)
    expect(requests(one)).toEqual([])
    expect(requests(node.step({ _tag: "WriteBacklog", over: false }, at()))).toEqual([{ to: LEADER, from: 20 }])
  })

  it("does not ask twice when the disk catches up while a slice is on its way", () => {
    const { node, receive, at } = behind()
    const one = receive({ _tag: "CatchupReply", entries: entries(0, 20) })
    expect(requests(one)).toEqual([{ to: LEADER, from: 20 }])
    // The writes of the first slice fall behind and catch up before the second arrives.
    node.step({ _tag: "WriteBacklog", over: true }, at())
    expect(requests(node.step({ _tag: "WriteBacklog", over: false }, at()))).toEqual([])
    expect(requests(receive({ _tag: "CatchupReply", entries: entries(20, 40) }))).toEqual([{ to: LEADER, from: 40 }])
  })
})
