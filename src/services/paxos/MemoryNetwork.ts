/**
 * An in-memory peer network for tests: every endpoint opened on one network reaches the
 * others by node id, with no socket. Messages are delivered on a later turn of the event
 * loop (as from a socket), in order per link, as copies; links can be cut and healed.
 */
import { Effect, Layer, Queue } from "effect"
import { type Inbound, PeerNetwork, type PeerNetworkShape, type Transport, type TransportOptions } from "./Transport.js"

export interface MemoryNetwork {
  readonly network: PeerNetworkShape
  /** Drops every message between `a` and `b` (both ways) until healed. */
  readonly cut: (a: number, b: number) => void
  readonly heal: () => void
}

interface Endpoint {
  readonly deliver: (item: Inbound<unknown>) => void
}

export const make = (): MemoryNetwork => {
  const endpoints = new Map<number, Endpoint>()
  const cuts = new Set<string>()
  const key = (a: number, b: number) => (a < b ? `${a}-${b}` : `${b}-${a}`)
  const linked = (a: number, b: number) => endpoints.has(b) && !cuts.has(key(a, b))

  const open = <M>(options: TransportOptions<M>) =>
    Effect.gen(function*() {
      const inbound = yield* Queue.unbounded<Inbound<M>>()
      const deliver = options.onInbound ?? ((item: Inbound<M>) => void Queue.offerUnsafe(inbound, item))
      const self = options.nodeId
      const endpoint: Endpoint = { deliver: deliver as (item: Inbound<unknown>) => void }
      yield* Effect.acquireRelease(
        Effect.sync(() => endpoints.set(self, endpoint)),
        () => Effect.sync(() => {
          if (endpoints.get(self) === endpoint) endpoints.delete(self)
        })
      )
      let peerIds = options.peers.map((p) => p.nodeId).filter((id) => id !== self)
      const send = (to: number, message: M) =>
        Effect.sync(() => {
          if (!linked(self, to)) return
          // Copied at send time, as encoding would: a sender may reuse what it sent.
          const copy = structuredClone(message)
          setImmediate(() => {
            // Checked again on arrival: a cut or a stop in between loses the message, as TCP would.
            if (linked(self, to)) endpoints.get(to)!.deliver({ _tag: "Peer", from: self, message: copy })
          })
        })
      return {
        address: { host: "memory", port: self },
        send,
        replyToClient: () => Effect.void,
        inbound,
        reachable: Effect.sync(() => new Map(peerIds.map((id) => [id, linked(self, id)]))),
        setPeers: (peers) => Effect.sync(() => {
          peerIds = peers.map((p) => p.nodeId).filter((id) => id !== self)
        })
      } satisfies Transport<M>
    })

  return {
    network: { open },
    cut: (a, b) => void cuts.add(key(a, b)),
    heal: () => cuts.clear()
  }
}

/** A fresh in-memory network as the PeerNetwork service. */
export const layer: Layer.Layer<PeerNetwork> = Layer.sync(PeerNetwork, () => PeerNetwork.of(make().network))
