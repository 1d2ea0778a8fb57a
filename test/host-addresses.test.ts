import { describe, expect, it } from "@effect/vitest"
import { Effect, Schedule, Schema } from "effect"
import * as net from "node:net"
import { canonicalAddress } from "../src/domain/wire/address.js"
import * as HostAddresses from "../src/services/net/HostAddresses.js"
import * as Transport from "../src/services/paxos/Transport.js"

const freePort = Effect.callback<number>((resume) => {
  const server = net.createServer()
  server.listen(0, "127.0.0.1", () => {
    const port = (server.address() as net.AddressInfo).port
    server.close(() => resume(Effect.succeed(port)))
  })
})

describe("HostAddresses", () => {
  it.live("resolves a name to its addresses, passes an IP through, and fails typed on a name that does not resolve", () =>
    Effect.gen(function*() {
      expect(yield* HostAddresses.resolve("localhost")).toContain("127.0.0.1")
      expect(yield* HostAddresses.resolve("10.1.2.3")).toEqual(["10.1.2.3"])
      // As sockets report IPv4 peers on a dual-stack listener.
      expect(yield* HostAddresses.resolve("::ffff:10.1.2.3")).toEqual(["10.1.2.3"])
      expect(yield* HostAddresses.resolve("0:0:0:0:0:0:0:1")).toEqual(["::1"])
      const missing = yield* Effect.flip(HostAddresses.resolve("no-such-host.invalid"))
      expect(missing._tag).toBe("HostNotResolved")
      expect(missing.message).toContain("no-such-host.invalid does not resolve")
      // A node's own host must resolve: it listens on it.
      expect(["127.0.0.1", "::1"]).toContain(yield* HostAddresses.listenAddress("localhost"))
      expect(yield* HostAddresses.listenAddress("0.0.0.0")).toBe("0.0.0.0")
      expect((yield* Effect.flip(HostAddresses.listenAddress("no-such-host.invalid")))._tag).toBe("HostNotResolved")
    }))

  it("writes an address the way sockets report it", () => {
    expect(canonicalAddress("::FFFF:192.168.0.1")).toBe("192.168.0.1")
    expect(canonicalAddress("0:0:0:0:0:ffff:c0a8:1")).toBe("192.168.0.1")
    expect(canonicalAddress("2001:DB8:0:0:1:0:0:1")).toBe("2001:db8::1:0:0:1")
    expect(canonicalAddress("fe80:0:0:0:0:0:0:0")).toBe("fe80::")
    expect(canonicalAddress("1:2:3:4:5:6:7:8")).toBe("1:2:3:4:5:6:7:8")
    expect(canonicalAddress("10.0.0.1")).toBe("10.0.0.1")
  })

  it.live("answers isMember from the last resolution, follows a change, and survives a name that does not resolve", () =>
    Effect.gen(function*() {
      const real = yield* HostAddresses.memberMatcher(["localhost", "10.0.0.5", "no-such-host.invalid"])
      expect(real.isMember("127.0.0.1")).toBe(true)
      expect(real.isMember("::ffff:127.0.0.1")).toBe(true)
      expect(real.isMember("::ffff:10.0.0.5")).toBe(true)
      expect(real.isMember("10.0.0.6")).toBe(false)
      expect((yield* real.addresses).get("no-such-host.invalid")).toEqual([])

      // A name that moves (DNS changed): followed on refresh (the TTL's, or a miss's).
      let answer: ReadonlyArray<string> = ["10.0.0.1"]
      const moving = yield* HostAddresses.memberMatcher(["db1.example"], { resolve: () => Effect.sync(() => answer) })
      expect(moving.isMember("10.0.0.1")).toBe(true)
      answer = ["10.0.0.2"]
      expect(moving.isMember("10.0.0.1")).toBe(true) // until looked up again
      yield* moving.refresh
      expect(moving.isMember("10.0.0.2")).toBe(true)
      expect(moving.isMember("10.0.0.1")).toBe(false)
      // A failed lookup keeps the last addresses (a DNS outage does not lock members out).
      let calls = 0
      const failing = yield* HostAddresses.memberMatcher(["db2.example"], {
        resolve: (host) =>
          ++calls === 1 ? Effect.succeed(["10.0.0.3"]) : Effect.fail(new HostAddresses.HostNotResolved({ host, reason: "EAI_AGAIN" }))
      })
      yield* failing.refresh
      expect(calls).toBe(2)
      expect(failing.isMember("10.0.0.3")).toBe(true)
      // Hosts the log adds (member add) are watched too; an IP at once.
      yield* moving.add(["10.0.0.9"])
      expect(moving.isMember("10.0.0.9")).toBe(true)
    }))

  it.live("peers named by host name link up (the transport listens on, and dials from, the name's address); its own name must resolve", () =>
    Effect.gen(function*() {
      const Ping = Schema.TaggedStruct("Ping", { n: Schema.Int })
      const [p1, p2] = [yield* freePort, yield* freePort]
      const node = (nodeId: number, port: number, peer: { readonly nodeId: number; readonly port: number }) =>
        Transport.make({
          clusterId: "names",
          nodeId,
          listen: { host: "localhost", port },
          peers: [{ nodeId: peer.nodeId, host: "localhost", port: peer.port }],
          messageSchema: Ping
        })
      const a = yield* node(1, p1, { nodeId: 2, port: p2 })
      yield* node(2, p2, { nodeId: 1, port: p1 })
      expect(a.address).toEqual({ host: "localhost", port: p1 })
      yield* a.reachable.pipe(
        Effect.repeat({ schedule: Schedule.spaced("20 millis"), until: (m) => m.get(2) === true }),
        Effect.timeout("10 seconds")
      )
      const unresolved = yield* Effect.flip(Transport.make({
        clusterId: "names",
        nodeId: 3,
        listen: { host: "no-such-host.invalid", port: yield* freePort },
        peers: [],
        messageSchema: Ping
      }))
      expect(unresolved.message).toMatch(/^cannot listen on no-such-host\.invalid:\d+: the host name no-such-host\.invalid does not resolve/)
    }))
})
