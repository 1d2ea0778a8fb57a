import { describe, expect, it } from "@effect/vitest"
import { Cause, Data, Duration, Effect, Exit, Logger, Queue, Result, Schedule, Schema, Scope } from "effect"
import * as net from "node:net"
import {
  decodePayload,
  encodeFrame,
  FrameDecoder,
  FrameTooLarge,
  tryEncodeFrame
} from "../src/domain/wire/frame.js"
import * as Transport from "../src/services/paxos/Transport.js"

// ---------------------------------------------------------------------------
// Test message schema
// ---------------------------------------------------------------------------

const Ping = Schema.TaggedStruct("Ping", { from: Schema.Int, n: Schema.Int })
const Blob = Schema.TaggedStruct("Blob", { data: Schema.Uint8Array })
const Msg = Schema.Union([Ping, Blob])
type Msg = typeof Msg.Type

const CLUSTER = "test-cluster"
const HOST = "127.0.0.1"

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

class WaitTimeout extends Data.TaggedError("WaitTimeout")<{ readonly what: string }> {}
class RawSocketError extends Data.TaggedError("RawSocketError")<{ readonly cause: unknown }> {}

/** Polls `check` until it holds; fails after `timeout` (the bound, not a sleep). */
const eventually = (what: string, check: Effect.Effect<boolean>, timeout: Duration.Input = "10 seconds") =>
  check.pipe(
    Effect.flatMap((ok) => (ok ? Effect.void : Effect.fail(new WaitTimeout({ what })))),
    Effect.retry(Schedule.spaced("10 millis")),
    Effect.timeoutOrElse({ duration: timeout, orElse: () => Effect.fail(new WaitTimeout({ what })) })
  )

/** Takes from `queue` in batches until `n` items arrived, bounded by `timeout`. */
const takeN = <A, E>(queue: Queue.Dequeue<A, E>, n: number, what: string, timeout: Duration.Input = "10 seconds") =>
  Effect.gen(function*() {
    const out: Array<A> = []
    while (out.length < n) out.push(...(yield* Queue.takeAll(queue)))
    return out
  }).pipe(Effect.timeoutOrElse({ duration: timeout, orElse: () => Effect.fail(new WaitTimeout({ what })) }))

/** Reserves a free port by binding port 0 and releasing it. */
const freePort = Effect.callback<number>((resume) => {
  const server = net.createServer()
  server.listen(0, HOST, () => {
    const port = (server.address() as net.AddressInfo).port
    server.close(() => resume(Effect.succeed(port)))
  })
})

const reachable = (t: Transport.Transport<Msg>, ids: ReadonlyArray<number>) =>
  t.reachable.pipe(Effect.map((m) => ids.every((id) => m.get(id) === true)))

const node = (nodeId: number, port: number, peers: Record<number, number>, extra: Partial<Transport.TransportOptions<Msg>> = {}) =>
  Transport.make<Msg>({
    clusterId: CLUSTER,
    nodeId,
    listen: { host: HOST, port },
    peers: Object.entries(peers).map(([id, p]) => ({ nodeId: Number(id), host: HOST, port: p })),
    messageSchema: Msg,
    ...extra
  })

/**
 * Opens a raw socket, writes `bytes`, and resolves with everything received
 * once the *server* closes the connection. With `then`, those bytes are
 * written after the first answer arrives (i.e. after HelloOk), optionally
 * followed by ending our side.
 */
const rawSession = (
  port: number,
  bytes: Uint8Array,
  options: { readonly then?: Uint8Array; readonly end?: boolean } = {}
) =>
  Effect.callback<Buffer, RawSocketError>((resume) => {
    const received: Array<Buffer> = []
    const socket = net.connect({ host: HOST, port }, () => {
      if (bytes.length > 0) socket.write(bytes)
    })
    socket.on("data", (chunk: Buffer) => {
      received.push(chunk)
      if (received.length === 1 && options.then) {
        socket.write(options.then)
        if (options.end) socket.end()
      }
    })
    socket.on("error", () => {}) // a reset by the server also counts as closed
    socket.on("close", () => resume(Effect.succeed(Buffer.concat(received))))
    return Effect.sync(() => socket.destroy())
  }).pipe(
    Effect.timeoutOrElse({
      duration: "5 seconds",
      orElse: () => Effect.fail(new RawSocketError({ cause: "server did not close the connection" }))
    })
  )

const frames = (...payloads: ReadonlyArray<unknown>): Uint8Array =>
  Buffer.concat(payloads.map((p) => encodeFrame(p)))

/** Decodes whatever complete frames `bytes` holds. */
const decodeAll = (bytes: Uint8Array): Array<unknown> =>
  new FrameDecoder().push(bytes).frames.map((f) => {
    const r = decodePayload(f)
    return Result.isSuccess(r) ? r.success : r.failure
  })

/** Deterministic PRNG (mulberry32) so failures reproduce. */
const prng = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}
const randomBytes = (rand: () => number, n: number) => {
  const out = new Uint8Array(n)
  for (let i = 0; i < n; i++) out[i] = Math.floor(rand() * 256)
  return out
}

/** Collects logged values so tests can assert that typed errors were logged. */
const captureLogs = () => {
  const logged: Array<unknown> = []
  const logger = Logger.make((options) => {
    const message = options.message
    if (Array.isArray(message)) logged.push(...message)
    else logged.push(message)
  })
  return { logged, layer: Logger.layer([logger]) }
}
const loggedTags = (logged: ReadonlyArray<unknown>): Array<string> =>
  logged.flatMap((m) =>
    typeof m === "object" && m !== null && "_tag" in m
      ? [String(m._tag) + ("kind" in m ? `:${String(m.kind)}` : "") + ("cause" in m && typeof m.cause === "object" && m.cause !== null && "_tag" in m.cause ? `:${String(m.cause._tag)}` : "")]
      : []
  )

// ---------------------------------------------------------------------------
// Frame codec
// ---------------------------------------------------------------------------

describe("frame", () => {
  const payloads: ReadonlyArray<unknown> = [
    { _tag: "Ping", n: 1 },
    { _tag: "Blob", data: Buffer.from([0, 1, 2, 3, 255]) },
    "",
    { nested: [1, 2, { x: "y" }], big: 12345678901 },
    { bin: new Uint8Array(300).fill(7) }
  ]
  const stream = frames(...payloads)

  const decodeChunks = (chunks: ReadonlyArray<Uint8Array>) => {
    const decoder = new FrameDecoder(1024)
    const out: Array<unknown> = []
    for (const chunk of chunks) {
      const { error, frames } = decoder.push(chunk)
      expect(error).toBeUndefined()
      for (const f of frames) out.push(Result.getOrThrow(decodePayload(f)))
    }
    expect(decoder.buffered).toBe(0)
    return out
  }

  const normalize = (values: ReadonlyArray<unknown>) =>
    values.map((v) => JSON.parse(JSON.stringify(v, (_, x) => (x instanceof Uint8Array || x?.type === "Buffer" ? [...Buffer.from(x.data ?? x)] : x))))

  it("round-trips binary values as Uint8Array", () => {
    const [value] = decodeChunks([encodeFrame({ data: new Uint8Array([1, 2, 3]) })]) as [{ data: Uint8Array }]
    expect(value.data).toBeInstanceOf(Uint8Array)
    expect([...value.data]).toEqual([1, 2, 3])
  })

  it("decodes with a chunk boundary at every offset", () => {
    const expected = normalize(payloads)
    for (let i = 0; i <= stream.length; i++) {
      expect(normalize(decodeChunks([stream.subarray(0, i), stream.subarray(i)]))).toEqual(expected)
    }
    // two boundaries at every pair of offsets (every 7th for speed)
    for (let i = 0; i <= stream.length; i += 7) {
      for (let j = i; j <= stream.length; j++) {
        expect(normalize(decodeChunks([stream.subarray(0, i), stream.subarray(i, j), stream.subarray(j)]))).toEqual(
          expected
        )
      }
    }
  })

  it("decodes byte by byte and all at once", () => {
    const expected = normalize(payloads)
    const bytes = Array.from(stream, (_, i) => stream.subarray(i, i + 1))
    expect(normalize(decodeChunks(bytes))).toEqual(expected)
    expect(normalize(decodeChunks([stream]))).toEqual(expected)
  })

  it("returns a frame that fills its chunk without copying, and copies a small one out of a big chunk", () => {
    const big = encodeFrame({ blob: new Uint8Array(4096) })
    const small = encodeFrame({ n: 1 })
    const alone = new FrameDecoder().push(big).frames
    expect(alone[0]!.buffer).toBe(big.buffer)
    // a small frame kept from a big chunk must not keep the chunk alive
    const chunk = Buffer.concat([small, big])
    const { frames: out } = new FrameDecoder().push(chunk)
    expect(out.length).toBe(2)
    expect(out[0]!.buffer).not.toBe(chunk.buffer)
    expect(out[1]!.buffer).toBe(chunk.buffer)
  })

  it("rejects an oversized length prefix before buffering it", () => {
    const decoder = new FrameDecoder(1024)
    const ok = encodeFrame({ n: 1 })
    const { error, frames: out } = decoder.push(Buffer.concat([ok, Buffer.from([0xff, 0xff, 0xff, 0xff, 1, 2, 3])]))
    expect(out.length).toBe(1)
    expect(error).toBeInstanceOf(FrameTooLarge)
    expect(error).toMatchObject({ _tag: "FrameTooLarge", length: 0xffffffff, max: 1024 })
    expect(decoder.buffered).toBe(0)
    // stays failed
    expect(decoder.push(ok).error?._tag).toBe("FrameTooLarge")
  })

  it("reports an incomplete frame as buffered", () => {
    const decoder = new FrameDecoder()
    const frame = encodeFrame({ n: 42 })
    expect(decoder.push(frame.subarray(0, frame.length - 1)).frames.length).toBe(0)
    expect(decoder.buffered).toBe(frame.length - 1)
  })

  it("never throws on random garbage or truncated input", () => {
    const rand = prng(0xc0ffee)
    let decodeErrors = 0
    for (let round = 0; round < 3000; round++) {
      const garbage = randomBytes(rand, Math.floor(rand() * 64))
      // as a raw payload
      const r = decodePayload(garbage)
      if (Result.isFailure(r)) {
        expect(r.failure._tag).toBe("FrameDecodeError")
        decodeErrors++
      }
      // as a stream of frames, in random chunks
      const decoder = new FrameDecoder(1 << 20)
      let offset = 0
      while (offset < garbage.length) {
        const n = 1 + Math.floor(rand() * 16)
        const { error, frames: out } = decoder.push(garbage.subarray(offset, offset + n))
        offset += n
        for (const f of out) {
          const d = decodePayload(f)
          if (Result.isFailure(d)) expect(d.failure._tag).toBe("FrameDecodeError")
        }
        if (error) {
          expect(error._tag).toBe("FrameTooLarge")
          break
        }
      }
      // a valid frame truncated at a random point: its payload never decodes
      const valid = encodeFrame({ _tag: "Blob", data: randomBytes(rand, 1 + Math.floor(rand() * 40)), n: round })
      const cut = 4 + Math.floor(rand() * (valid.length - 5))
      const truncated = decodePayload(valid.subarray(4, cut))
      expect(Result.isFailure(truncated)).toBe(true)
      const partial = new FrameDecoder()
      expect(partial.push(valid.subarray(0, cut)).frames.length).toBe(0)
      expect(partial.buffered).toBe(cut)
    }
    expect(decodeErrors).toBeGreaterThan(100)
    // pathological nesting (deep arrays) is a typed error too, not a stack overflow
    const deep = new Uint8Array(200_000).fill(0x91)
    expect(Result.isFailure(decodePayload(deep))).toBe(true)
    expect(Result.isFailure(decodePayload(new Uint8Array(0)))).toBe(true)
  })

  it("reports unencodable values as a typed error", () => {
    const r = tryEncodeFrame({ big: 2n ** 70n })
    expect(Result.isFailure(r) && r.failure._tag).toBe("FrameEncodeError")
    expect(() => encodeFrame({ big: 2n ** 70n })).toThrow(expect.objectContaining({ _tag: "FrameEncodeError" }))
  })
})

// ---------------------------------------------------------------------------
// Transport
// ---------------------------------------------------------------------------

describe("Transport", () => {
  it.live("three nodes exchange messages in all directions, in order per sender", () =>
    Effect.gen(function*() {
      const [p1, p2, p3] = [yield* freePort, yield* freePort, yield* freePort]
      const ports: Record<number, number> = { 1: p1, 2: p2, 3: p3 }
      const peersOf = (id: number) => Object.fromEntries(Object.entries(ports).filter(([k]) => Number(k) !== id))
      const nodes = new Map<number, Transport.Transport<Msg>>()
      for (const id of [1, 2, 3]) nodes.set(id, yield* node(id, ports[id]!, peersOf(id)))
      for (const [id, t] of nodes) {
        expect(t.address.port).toBe(ports[id])
        yield* eventually(`node ${id} reaches all peers`, reachable(t, [1, 2, 3].filter((x) => x !== id)))
      }

      const N = 500
      for (let n = 0; n < N; n++) {
        for (const [from, t] of nodes) {
          for (const to of [1, 2, 3]) if (to !== from) yield* t.send(to, { _tag: "Ping", from, n })
        }
      }
      for (const [id, t] of nodes) {
        const got = yield* takeN(t.inbound, 2 * N, `node ${id} inbound`)
        expect(got.length).toBe(2 * N)
        for (const from of [1, 2, 3].filter((x) => x !== id)) {
          const fromSender = got.filter((m) => m._tag === "Peer" && m.from === from)
          expect(fromSender.map((m) => (m.message as typeof Ping.Type).n)).toEqual(Array.from({ length: N }, (_, i) => i))
          expect(fromSender.every((m) => (m.message as typeof Ping.Type).from === from)).toBe(true)
        }
      }

      // 1 MiB binary message arrives intact
      const data = randomBytes(prng(7), 1024 * 1024)
      yield* nodes.get(1)!.send(3, { _tag: "Blob", data })
      const [blob] = yield* takeN(nodes.get(3)!.inbound, 1, "blob")
      expect(blob!._tag).toBe("Peer")
      const message = blob!.message
      expect(message._tag).toBe("Blob")
      if (message._tag === "Blob") {
        expect(message.data).toBeInstanceOf(Uint8Array)
        expect(message.data.length).toBe(data.length)
        expect(Buffer.compare(Buffer.from(message.data), Buffer.from(data))).toBe(0)
      }

      // sending to a node that is not configured never fails
      yield* nodes.get(1)!.send(42, { _tag: "Ping", from: 1, n: 0 })
    }))

  it.live("closes hostile connections and keeps serving legitimate peers", () => {
    const logs = captureLogs()
    return Effect.gen(function*() {
      const [pa, pb] = [yield* freePort, yield* freePort]
      const a = yield* node(1, pa, { 2: pb }, { maxFrameBytes: 1024 * 1024, handshakeTimeout: "300 millis" })
      const b = yield* node(2, pb, { 1: pa })
      yield* eventually("a <-> b connected", Effect.zipWith(reachable(a, [2]), reachable(b, [1]), (x, y) => x && y))

      // garbage bytes (an HTTP request: "GET " is a 1.2 GB length prefix)
      yield* rawSession(pa, Buffer.from("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
      // garbage with a small length prefix: undecodable msgpack
      yield* rawSession(pa, Buffer.from([0, 0, 0, 3, 0xc1, 0xc1, 0xc1]))
      // wrong cluster id: answered with HelloRejected, then closed
      const wrongCluster = yield* rawSession(
        pa,
        frames({ _tag: "Hello", clusterId: "other", nodeId: 2, role: "peer" })
      )
      expect(decodeAll(wrongCluster)).toMatchObject([{ _tag: "HelloRejected" }])
      // unknown node id
      const unknownNode = yield* rawSession(
        pa,
        frames({ _tag: "Hello", clusterId: CLUSTER, nodeId: 99, role: "peer" })
      )
      expect(decodeAll(unknownNode)).toMatchObject([{ _tag: "HelloRejected" }])
      // a well-formed but invalid hello (unknown role) is answered too
      const badRole = yield* rawSession(pa, frames({ _tag: "Hello", clusterId: CLUSTER, nodeId: 2, role: "admin" }))
      expect(decodeAll(badRole)).toMatchObject([{ _tag: "HelloRejected" }])
      // a client while clients are not accepted
      const client = yield* rawSession(pa, frames({ _tag: "Hello", clusterId: CLUSTER, nodeId: 0, role: "client" }))
      expect(decodeAll(client)).toMatchObject([{ _tag: "HelloRejected" }])
      // oversized length prefix
      yield* rawSession(pa, Buffer.from([0xff, 0xff, 0xff, 0xff, 0, 0, 0]))
      // valid hello, then a schema-invalid message
      const hello = { _tag: "Hello", clusterId: CLUSTER, nodeId: 2, role: "peer" }
      const invalid = yield* rawSession(pa, frames(hello), { then: frames({ _tag: "Ping", from: "two", n: 1.5 }) })
      expect(decodeAll(invalid)).toMatchObject([{ _tag: "HelloOk", nodeId: 1 }])
      // valid hello, then a frame above maxFrameBytes (2 MiB > 1 MiB)
      yield* rawSession(pa, frames(hello), { then: Buffer.from([0, 0x20, 0, 0, 1, 2, 3]) })
      // valid hello, then a truncated frame and end of stream
      yield* rawSession(pa, frames(hello), {
        then: encodeFrame({ _tag: "Ping", from: 2, n: 1 }).subarray(0, 6),
        end: true
      })
      // a valid hello followed at once by garbage in the same write
      yield* rawSession(pa, Buffer.concat([frames(hello), Buffer.from([0, 0, 0, 2, 0xc1, 0xc1])]))
      // no hello at all: closed after the handshake timeout
      yield* rawSession(pa, new Uint8Array(0))

      // legitimate peers still exchange messages
      expect(yield* reachable(a, [2])).toBe(true)
      yield* a.send(2, { _tag: "Ping", from: 1, n: 7 })
      yield* b.send(1, { _tag: "Ping", from: 2, n: 8 })
      const [atB] = yield* takeN(b.inbound, 1, "b inbound")
      const atA = yield* takeN(a.inbound, 1, "a inbound")
      expect(atB).toEqual({ _tag: "Peer", from: 1, message: { _tag: "Ping", from: 1, n: 7 } })
      // the raw "node 2" sessions never delivered anything
      expect(atA).toEqual([{ _tag: "Peer", from: 2, message: { _tag: "Ping", from: 2, n: 8 } }])

      // each hostile connection was logged with a typed error
      const tags = loggedTags(logs.logged)
      for (
        const expected of [
          "TransportFrameError:FrameTooLarge",
          "TransportHandshakeError:Malformed",
          "TransportHandshakeError:ClusterMismatch",
          "TransportHandshakeError:UnknownNode",
          "TransportHandshakeError:ClientsNotAccepted",
          "TransportSchemaError",
          "TransportFrameError:FrameTruncated",
          "TransportFrameError:FrameDecodeError",
          "TransportHandshakeError:Timeout"
        ]
      ) {
        expect(tags.some((t) => t.startsWith(expected)), `${expected} in ${tags.join(", ")}`).toBe(true)
      }
      // the post-handshake limit is maxFrameBytes, not the small hello limit
      expect(logs.logged).toContainEqual(
        expect.objectContaining({
          _tag: "TransportFrameError",
          cause: expect.objectContaining({ _tag: "FrameTooLarge", length: 0x200000, max: 1024 * 1024 })
        })
      )
    }).pipe(Effect.provide(logs.layer))
  })

  it.live("reconnects when a peer restarts on the same port", () =>
    Effect.gen(function*() {
      const [pa, pb] = [yield* freePort, yield* freePort]
      const a = yield* node(1, pa, { 2: pb })

      const startB = Effect.gen(function*() {
        const scope = yield* Scope.make()
        const b = yield* node(2, pb, { 1: pa }).pipe(Scope.provide(scope))
        return { b, scope }
      })

      const exchange = (b: Transport.Transport<Msg>, n: number) =>
        Effect.gen(function*() {
          yield* eventually("a <-> b connected", Effect.zipWith(reachable(a, [2]), reachable(b, [1]), (x, y) => x && y))
          yield* a.send(2, { _tag: "Ping", from: 1, n })
          yield* b.send(1, { _tag: "Ping", from: 2, n })
          expect(yield* takeN(b.inbound, 1, "b inbound")).toEqual([
            { _tag: "Peer", from: 1, message: { _tag: "Ping", from: 1, n } }
          ])
          expect(yield* takeN(a.inbound, 1, "a inbound")).toEqual([
            { _tag: "Peer", from: 2, message: { _tag: "Ping", from: 2, n } }
          ])
        })

      const first = yield* startB
      yield* exchange(first.b, 1)
      yield* Scope.close(first.scope, Exit.void)
      yield* eventually("a notices b is gone", reachable(a, [2]).pipe(Effect.map((ok) => !ok)))
      // sends while disconnected are dropped, not failed
      yield* a.send(2, { _tag: "Ping", from: 1, n: 99 })

      const second = yield* startB
      yield* exchange(second.b, 2)
      yield* Scope.close(second.scope, Exit.void)
    }))

  it.live("serves clients when acceptClients is set", () =>
    Effect.gen(function*() {
      const server = yield* node(1, 0, {}, { acceptClients: true })
      const client = yield* Transport.connectClient<Msg>({
        clusterId: CLUSTER,
        host: HOST,
        port: server.address.port,
        messageSchema: Msg
      })
      yield* client.send({ _tag: "Ping", from: 0, n: 1 })
      const [request] = yield* takeN(server.inbound, 1, "server inbound")
      expect(request).toMatchObject({ _tag: "Client", message: { _tag: "Ping", from: 0, n: 1 } })
      if (request?._tag !== "Client") return
      yield* server.replyToClient(request.clientId, { _tag: "Blob", data: new Uint8Array([9, 8, 7]) })
      const [reply] = yield* takeN(client.inbound, 1, "client inbound")
      expect(reply?._tag).toBe("Blob")
      if (reply?._tag === "Blob") expect([...reply.data]).toEqual([9, 8, 7])
      // replies to unknown clients are dropped, not failed
      yield* server.replyToClient(12345, { _tag: "Ping", from: 1, n: 0 })
      expect(yield* client.isOpen).toBe(true)
    }))

  it.live("ends a client's inbound queue when the server goes away", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const server = yield* node(1, 0, {}, { acceptClients: true }).pipe(Scope.provide(scope))
      const client = yield* Transport.connectClient<Msg>({
        clusterId: CLUSTER,
        host: HOST,
        port: server.address.port,
        messageSchema: Msg
      })
      yield* Scope.close(scope, Exit.void)
      const exit = yield* Effect.exit(
        Queue.takeAll(client.inbound).pipe(Effect.timeoutOrElse({
          duration: "5 seconds",
          orElse: () => Effect.fail(new WaitTimeout({ what: "client queue end" }))
        }))
      )
      expect(Exit.isFailure(exit) && Cause.pretty(exit.cause)).toContain("Done")
      expect(yield* client.isOpen).toBe(false)
    }))

  it.live("rejects clients when acceptClients is not set", () =>
    Effect.gen(function*() {
      const server = yield* node(1, 0, {})
      const error = yield* Effect.flip(
        Transport.connectClient<Msg>({ clusterId: CLUSTER, host: HOST, port: server.address.port, messageSchema: Msg })
      )
      expect(error._tag).toBe("TransportConnectError")
      expect(error.cause).toMatchObject({ _tag: "TransportHandshakeError", kind: "Rejected" })
      // and a wrong cluster id is rejected the same way
      const accepting = yield* node(2, 0, {}, { acceptClients: true })
      const wrong = yield* Effect.flip(
        Transport.connectClient<Msg>({ clusterId: "nope", host: HOST, port: accepting.address.port, messageSchema: Msg })
      )
      expect(wrong.cause).toMatchObject({ _tag: "TransportHandshakeError", kind: "Rejected" })
    }))

  it.live("does not use a link whose listener is another node than configured", () => {
    const logs = captureLogs()
    return Effect.gen(function*() {
      const [pa, pb] = [yield* freePort, yield* freePort]
      // node 1 believes node 2 listens on pb, but node 3 does
      const a = yield* node(1, pa, { 2: pb })
      yield* node(3, pb, { 1: pa })
      yield* eventually(
        "WrongNode handshake failure logged",
        Effect.sync(() => loggedTags(logs.logged).some((t) => t === "TransportHandshakeError:WrongNode"))
      )
      expect(yield* reachable(a, [2])).toBe(false)
    }).pipe(Effect.provide(logs.layer))
  })

  it.live("fails to listen on a port in use with a typed error", () =>
    Effect.gen(function*() {
      const first = yield* node(1, 0, {})
      const error = yield* Effect.flip(node(2, first.address.port, {}))
      expect(error._tag).toBe("TransportListenError")
    }))
})
