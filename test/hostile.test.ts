import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as net from "node:net"
import * as LocalCluster from "../src/testing/LocalCluster.js"
import { Rng } from "./support/sim.js"
import { adminQuery, checksum, createAppUser, idsOn, startWriter, statuses, waitConverged, waitForMaster } from "./support/dbCluster.js"

const TABLE = "d.t"

/** Shapes of bad input: random bytes, a valid-looking start cut short, huge lengths, a flood. */
const payloads = (rng: Rng): ReadonlyArray<Uint8Array> => {
  const random = (n: number) => Uint8Array.from({ length: n }, () => rng.int(0, 255))
  return [
    random(1),
    random(64),
    random(4096),
    // MySQL packet header announcing 16 MB, then nothing
    Uint8Array.of(0xff, 0xff, 0xff, 0x00, 0x03),
    // a frame header announcing 2^32-1 bytes
    Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0x00, 0x01),
    // a PROXY header cut short, and one with garbage addresses
    new TextEncoder().encode("PROXY TCP4 1.2.3"),
    new TextEncoder().encode("PROXY TCP4 999.1.1.1 127.0.0.1 1 2\r\n"),
    new TextEncoder().encode("GET /status HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n"),
    random(256 * 1024),
    // a TLS record header (what the TLS listeners and the admin port's HTTPS side read), then garbage
    Uint8Array.of(0x16, 0x03, 0x01, 0x00, 0x40, ...random(64)),
    // a MySQL SSL request (the client ports' TLS bridge starts), then garbage instead of a ClientHello
    Uint8Array.of(32, 0, 0, 1, 0x00, 0x8a, 0x00, 0x00, ...new Array<number>(28).fill(0), 0x16, 0x03, 0x01, 0x00, 0x10, ...random(16))
  ]
}

/** Sends `bytes` and waits (bounded) until the peer closes or the bound passes; never throws. */
const hit = (host: string, port: number, bytes: Uint8Array) =>
  Effect.callback<"closed" | "open">((resume) => {
    const socket = net.connect({ host, port })
    let done = false
    const finish = (how: "closed" | "open") => {
      if (done) return
      done = true
      socket.destroy()
      resume(Effect.succeed(how))
    }
    // Read (and drop) whatever comes back: a paused socket would never see the close.
    socket.on("data", () => {})
    socket.on("error", () => finish("closed"))
    socket.on("close", () => finish("closed"))
    socket.on("connect", () => socket.write(bytes, () => socket.end()))
    const timer = setTimeout(() => finish("open"), 3_000)
    socket.on("close", () => clearTimeout(timer))
  })

describe("hostile input on every listener", () => {
  it.live.each([
    { mode: "plain", tls: false },
    { mode: "with peer and client TLS", tls: true }
  ])("random, truncated and oversized bytes close only their own connections; no process dies; writes stay consistent ($mode)", ({ tls }) =>
    Effect.gen(function*() {
      const c = yield* LocalCluster.make({ nodes: 3, database: true, ...(tls ? { tls: true, clientTls: true } : {}) })
      const master = yield* waitForMaster(c, "a first master")
      yield* createAppUser(master)
      yield* adminQuery(master, "CREATE DATABASE IF NOT EXISTS d")
      yield* adminQuery(master, `CREATE TABLE ${TABLE} (id INT PRIMARY KEY, v INT)`)
      const rng = new Rng(tls ? 20261203 : 20261123)
      const acked = yield* Effect.scoped(Effect.gen(function*() {
        const writer = yield* startWriter(c.nodes.find((n) => n !== master)!.rwPort!, TABLE)
        yield* LocalCluster.waitFor("writes", Effect.sync(() => writer.acked.length >= 20), 20_000)
        for (const n of c.nodes) {
          const listeners = [
            [n.host, n.peerPort], [n.host, n.adminPort], [n.host, n.rwPort!], [n.host, n.roPort!],
            [n.host, n.forwardRwPort!], [n.host, n.forwardRoPort!], ["127.0.0.1", n.mariadb!.binlogServerPort]
          ] as const
          for (const [i, [host, port]] of listeners.entries()) {
            const outcomes = yield* Effect.forEach(payloads(rng), (bytes) => hit(host, port, bytes), { concurrency: "unbounded" })
            // Each bad connection is closed by the listener (none left hanging open).
            expect({ node: n.nodeId, listener: i, open: outcomes.filter((o) => o === "open").length }).toEqual({ node: n.nodeId, listener: i, open: 0 })
          }
        }
        const before = writer.acked.length
        yield* LocalCluster.waitFor("writes after the attack", Effect.sync(() => writer.acked.length >= before + 20), 20_000)
        return writer
      })).pipe(Effect.map((w) => [...w.acked]))
      // Every agent still runs and answers.
      for (const n of c.nodes) expect(n.pid()).toBeDefined()
      const ss = yield* statuses(c)
      expect(ss.filter((s) => "error" in s)).toEqual([])
      yield* waitConverged(c, 60_000)
      const sums = yield* Effect.forEach(c.nodes, (n) => checksum(n, TABLE))
      expect(new Set(sums).size).toBe(1)
      for (const n of c.nodes) {
        const ids = yield* idsOn(n, TABLE)
        expect(acked.filter((k) => !ids.has(k))).toEqual([])
      }
    }), 180_000)
})
