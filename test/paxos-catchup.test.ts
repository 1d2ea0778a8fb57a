import { describe, expect, it } from "@effect/vitest"
import { defaultPaxosConfig, emptyDurableState, type Outputs, PaxosNode } from "../src/domain/paxos/core.js"
import type { ChosenEntry, PaxosMessage } from "../src/domain/paxos/messages.js"

/**
 * Catch-up pacing of the pure core, step by step: a node far behind asks for the next slice
 * in the step that takes one in (PaxosLog sends it before the state machine runs), never
 * while its writes are behind, and once they caught up only if no request is on its way.
 * Once a reply told how many values one carries, catchupPipeline requests are out at once.
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
const ranges = (out: Outputs) =>
  out.send.flatMap((s) => (s.message._tag === "CatchupRequest" ? [[s.message.from, s.message.from + s.message.count]] : []))

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

  it("after a reply of values it knows already (its peer lacks the one it misses) waits catchupRetryMs", () => {
    const { node, receive, first, at } = behind()
    expect(first).toEqual([{ to: LEADER, from: 0 }])
    // The peer lacks instance 0: what it sends is new, so the next request goes at once.
    expect(requests(receive({ _tag: "CatchupReply", entries: entries(1, 10) }))).toEqual([{ to: LEADER, from: 0 }])
    // The same again: nothing new, no request at once (nor at a tick soon after)...
    expect(requests(receive({ _tag: "CatchupReply", entries: entries(1, 10) }))).toEqual([])
    expect(requests(node.step({ _tag: "Tick" }, at()))).toEqual([])
    // ...but once catchupRetryMs has passed.
    const config = defaultPaxosConfig(1, [1, 2, 3], 7)
    expect(requests(node.step({ _tag: "Tick" }, at() + config.catchupRetryMs))).toEqual([{ to: LEADER, from: 0 }])
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

  it("asks again only when an answer is overdue, and then of another peer", () => {
    let now = 1_000
    const config = defaultPaxosConfig(1, [1, 2, 3], 7)
    const node = new PaxosNode(config, emptyDurableState)
    const from = (peer: number, message: PaxosMessage) => node.step({ _tag: "Receive", from: peer, message }, now)
    const tick = (ms: number) => node.step({ _tag: "Tick" }, (now += ms))
    const status = { _tag: "Status", chosenUpTo: PEER_HEAD, maxChosen: PEER_HEAD - 1, leader: { round: 1, node: LEADER } } as const
    const asked = [...requests(from(LEADER, status)), ...requests(from(3, status)), ...requests(tick(1))]
    expect(asked.length).toBe(1)
    const first = asked[0]!.to
    // A loaded peer takes a few hundred ms to answer 4 MiB: no second request meanwhile.
    expect(requests(tick(config.catchupRetryMs + 100))).toEqual([])
    expect(requests(tick(config.catchupReplyTimeoutMs / 2))).toEqual([])
    // Overdue: the next peer ahead is asked.
    const again = requests(tick(config.catchupReplyTimeoutMs))
    expect(again).toEqual([{ to: first === LEADER ? 3 : LEADER, from: 0 }])
    // Its answer: the next slice at once.
    const answer = from(again[0]!.to, { _tag: "CatchupReply", entries: entries(0, 30) })
    expect(answer.chosen.length).toBe(30)
    expect(requests(answer)).toEqual([{ to: expect.any(Number), from: 30 }])
  })

  it("keeps a pipeline of requests for a reply's worth each, and fills a slice a short reply left", () => {
    let now = 1_000
    const config = { ...defaultPaxosConfig(1, [1, 2], 7), catchupMaxBytes: 4 * 1024, catchupPipeline: 2 }
    const node = new PaxosNode(config, emptyDurableState)
    const receive = (message: PaxosMessage) => node.step({ _tag: "Receive", from: LEADER, message }, (now += 1))
    // Values of 1 KiB: a reply carries 4.
    const big = (from: number, to: number): Array<ChosenEntry> =>
      Array.from({ length: to - from }, (_, k) => ({
        instance: from + k,
        value: { proposer: LEADER, round: 1, seq: from + k, values: [new Uint8Array(1024)] }
      }))
    const status = receive({ _tag: "Status", chosenUpTo: PEER_HEAD, maxChosen: PEER_HEAD - 1, leader: { round: 1, node: LEADER } })
    // Before any reply: one request, for the configured batch.
    expect([...ranges(status), ...ranges(node.step({ _tag: "Tick" }, (now += 1)))]).toEqual([[0, config.catchupBatch]])
    const one = receive({ _tag: "CatchupReply", entries: big(0, 4) })
    expect(ranges(one)).toEqual([[4, 8], [8, 12]])
    // Nothing more while two are out.
    expect(ranges(node.step({ _tag: "Tick" }, (now += config.catchupRetryMs)))).toEqual([])
    // The later slice first, and cut short: the next request starts where it stopped
    // (what the earlier request covers and what was learned are not asked again).
    const two = receive({ _tag: "CatchupReply", entries: big(8, 11) })
    expect(two.chosen).toEqual([])
    expect(ranges(two)).toEqual([[11, 15]])
    // The earlier slice: the prefix joins what was learned beyond it.
    const three = receive({ _tag: "CatchupReply", entries: big(4, 8) })
    expect(three.chosen.map((e) => e.instance)).toEqual([4, 5, 6, 7, 8, 9, 10])
    expect(ranges(three)).toEqual([[15, 19]])
  })
})
