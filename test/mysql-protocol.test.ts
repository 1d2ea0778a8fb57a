import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber, Result } from "effect"
import { execFile } from "node:child_process"
import * as crypto from "node:crypto"
import * as net from "node:net"
import {
  encodePackets,
  MAX_PACKET_PAYLOAD,
  type Packet,
  PacketDecoder,
  PacketError,
  PacketReader,
  PacketWriter
} from "../src/domain/mysql/packet.js"
import {
  BinlogDumpFlag,
  buildAuthSwitchRequest,
  buildBinlogDump,
  buildBinlogEventPacket,
  buildColumnDefinition,
  buildComQuery,
  buildComQuit,
  buildEof,
  buildErr,
  buildHandshakeResponse41,
  buildHandshakeV10,
  buildOk,
  buildRegisterSlave,
  buildSemiSyncAck,
  buildTextResultSet,
  Capability,
  classifyResponse,
  CLIENT_CAPABILITIES,
  Command,
  NATIVE_PASSWORD_PLUGIN,
  nativePasswordHash,
  parseAuthSwitchRequest,
  parseBinlogDump,
  parseBinlogStreamPacket,
  parseColumnDefinition,
  parseComQuery,
  parseEof,
  parseErr,
  parseHandshakeResponse41,
  parseHandshakeV10,
  parseOk,
  parseQueryResponse,
  parseRegisterSlave,
  parseSemiSyncAck,
  type QueryResponse,
  QueryResponseDecoder,
  scramble,
  SERVER_CAPABILITIES,
  verifyNativePassword
} from "../src/domain/mysql/protocol.js"
import { MariaDbInstance } from "./support/MariaDbInstance.js"
import { ok } from "./support/result.js"
import { prng, randomBytes } from "./support/sim.js"

const failure = <A, E>(r: Result.Result<A, E>): E => {
  if (Result.isSuccess(r)) throw new Error("expected a failure")
  return r.failure
}
const concat = (parts: ReadonlyArray<Uint8Array>): Uint8Array => new Uint8Array(Buffer.concat(parts))

const salt20 = () => Uint8Array.from(crypto.randomBytes(20), (b) => 33 + (b % 94)) // printable, never NUL

// ---------------------------------------------------------------------------
// Unit: packet.ts
// ---------------------------------------------------------------------------

describe("packet", () => {
  it("reader and writer round-trip every primitive", () => {
    const bytes = new PacketWriter(1)
      .u8(0xab)
      .u16(0xbeef)
      .u24(0xfedcba)
      .u32(0xdeadbeef)
      .u48(0xfedcba987654)
      .u64(0xfedcba9876543210n)
      .u64(2 ** 53 - 1)
      .lenencInt(0xfa)
      .lenencInt(0xfb)
      .lenencInt(0xffff)
      .lenencInt(0x10000)
      .lenencInt(0xffffff)
      .lenencInt(0x1000000)
      .lenencNull()
      .lenencString("héllo")
      .lenencBytes(new Uint8Array(300).fill(7))
      .nulString("abc")
      .string("xyz")
      .zeros(2)
      .bytes(Uint8Array.of(1, 2, 3))
      .finish()
    const r = new PacketReader(bytes)
    expect(r.u8()).toBe(0xab)
    expect(r.u16()).toBe(0xbeef)
    expect(r.u24()).toBe(0xfedcba)
    expect(r.u32()).toBe(0xdeadbeef)
    expect(r.u48()).toBe(0xfedcba987654)
    expect(r.u64()).toBe(0xfedcba9876543210n)
    expect(r.u64Number()).toBe(2 ** 53 - 1)
    expect([r.lenencInt(), r.lenencInt(), r.lenencInt(), r.lenencInt(), r.lenencInt(), r.lenencInt()]).toEqual([
      0xfa,
      0xfb,
      0xffff,
      0x10000,
      0xffffff,
      0x1000000
    ])
    expect(r.lenencIntOrNull()).toBe(null)
    expect(r.lenencString()).toBe("héllo")
    expect(r.lenencBytes()).toEqual(new Uint8Array(300).fill(7))
    expect(r.nulString()).toBe("abc")
    expect(r.stringN(3)).toBe("xyz")
    r.skip(2)
    expect(r.rest()).toEqual(Uint8Array.of(1, 2, 3))
    expect(r.atEnd()).toBe(true)
  })

  it("reads fail with a typed error on truncation and bad values", () => {
    const fails = (bytes: ReadonlyArray<number>, f: (r: PacketReader) => unknown, reason: string) => {
      let e: unknown
      try {
        f(new PacketReader(Uint8Array.from(bytes)))
      } catch (x) {
        e = x
      }
      expect(e).toBeInstanceOf(PacketError)
      expect((e as PacketError).reason).toBe(reason)
    }
    fails([1], (r) => r.u16(), "truncated")
    fails([0xfd, 1, 2], (r) => r.lenencInt(), "truncated")
    fails([3, 0x61], (r) => r.lenencString(), "truncated")
    fails([0x61, 0x62], (r) => r.nulString(), "truncated")
    fails([0xff], (r) => r.lenencInt(), "malformed")
    fails([0xfb], (r) => r.lenencInt(), "malformed")
    fails([0, 0, 0, 0, 0, 0, 0, 0x80], (r) => r.u64Number(), "out-of-range")
    expect(() => new PacketWriter().u16(70000)).toThrow(PacketError)
    expect(() => new PacketWriter().nulString("a\0b")).toThrow(PacketError)
  })

  it("encodePackets frames small payloads and returns the next sequence id", () => {
    const { bytes, nextSequenceId } = encodePackets(255, Uint8Array.of(9, 8, 7))
    expect([...bytes]).toEqual([3, 0, 0, 255, 9, 8, 7])
    expect(nextSequenceId).toBe(0)
    expect([...encodePackets(0, new Uint8Array(0)).bytes]).toEqual([0, 0, 0, 0])
  })

  it("PacketDecoder reassembles a stream split at every offset", () => {
    const next = prng(1)
    const payloads = [0, 1, 2, 3, 4, 5, 250, 251, 300, 17].map((n) => randomBytes(next, n))
    let seq = 3
    const frames: Array<Uint8Array> = []
    const seqs: Array<number> = []
    for (const p of payloads) {
      seqs.push(seq)
      const e = encodePackets(seq, p)
      frames.push(e.bytes)
      seq = e.nextSequenceId
    }
    const stream = concat(frames)
    const check = (packets: ReadonlyArray<Packet>) => {
      expect(packets.map((p) => p.payload)).toEqual(payloads)
      expect(packets.map((p) => p.sequenceId)).toEqual(seqs)
      expect(packets.map((p) => p.nextSequenceId)).toEqual(seqs.map((s) => (s + 1) & 0xff))
    }
    for (let cut = 0; cut <= stream.length; cut++) {
      const d = new PacketDecoder()
      check([...ok(d.push(stream.subarray(0, cut))), ...ok(d.push(stream.subarray(cut)))])
      expect(d.pendingBytes).toBe(0)
    }
    // two cuts, and one byte at a time
    for (let a = 0; a < stream.length; a += 7) {
      for (let b = a; b <= stream.length; b += 13) {
        const d = new PacketDecoder()
        check([stream.subarray(0, a), stream.subarray(a, b), stream.subarray(b)].flatMap((c) => ok(d.push(c))))
      }
    }
    const d = new PacketDecoder()
    check([...stream].flatMap((b) => ok(d.push(Uint8Array.of(b)))))
  })

  it("splits and reassembles a 20 MiB payload, and exact multiples of 0xFFFFFF", () => {
    const next = prng(2)
    for (const size of [20 * 1024 * 1024, MAX_PACKET_PAYLOAD, 2 * MAX_PACKET_PAYLOAD, MAX_PACKET_PAYLOAD - 1, MAX_PACKET_PAYLOAD + 1]) {
      const payload = new Uint8Array(size)
      for (let i = 0; i < size; i += 4096) payload[i] = Math.floor(next() * 256)
      payload[size - 1] = 0x5a
      const { bytes, nextSequenceId } = encodePackets(254, payload)
      const packets = Math.floor(size / MAX_PACKET_PAYLOAD) + 1
      expect(bytes.length).toBe(size + 4 * packets)
      expect(nextSequenceId).toBe((254 + packets) & 0xff)
      // the last packet is short: empty when the size is an exact multiple
      const lastHeader = bytes.length - 4 - (size % MAX_PACKET_PAYLOAD)
      expect(bytes[lastHeader]! | (bytes[lastHeader + 1]! << 8) | (bytes[lastHeader + 2]! << 16)).toBe(size % MAX_PACKET_PAYLOAD)
      // random chunks, plus cuts right around every packet header
      const cuts = new Set<number>()
      for (let h = 0; h < packets; h++) for (let k = -3; k <= 5; k++) cuts.add(h * (MAX_PACKET_PAYLOAD + 4) + k)
      for (let o = 0; o < bytes.length; o += 1 + Math.floor(next() * 3_000_000)) cuts.add(o)
      const sorted = [...cuts].filter((c) => c > 0 && c < bytes.length).sort((a, b) => a - b)
      const d = new PacketDecoder({ maxPayloadLength: 64 * 1024 * 1024 })
      const got: Array<Packet> = []
      let prev = 0
      for (const c of [...sorted, bytes.length]) {
        got.push(...ok(d.push(bytes.subarray(prev, c))))
        prev = c
      }
      expect(got.length).toBe(1)
      expect(got[0]!.sequenceId).toBe(254)
      expect(got[0]!.nextSequenceId).toBe(nextSequenceId)
      expect(Buffer.compare(got[0]!.payload, payload)).toBe(0)
    }
  })

  it("PacketDecoder rejects oversized payloads and broken continuation sequences", () => {
    const d = new PacketDecoder({ maxPayloadLength: 10 })
    expect(ok(d.push(encodePackets(0, new Uint8Array(10)).bytes)).length).toBe(1)
    // rejected from the header alone, before the body is buffered
    expect(failure(d.push(Uint8Array.of(11, 0, 0, 0))).reason).toBe("too-large")
    expect(failure(d.push(new Uint8Array(11))).reason).toBe("too-large")

    const big = encodePackets(0, new Uint8Array(MAX_PACKET_PAYLOAD + 5)).bytes
    big[MAX_PACKET_PAYLOAD + 4 + 3] = 7 // second packet should be seq 1
    expect(failure(new PacketDecoder().push(big)).reason).toBe("sequence")
    expect(failure(new PacketDecoder({ maxPayloadLength: MAX_PACKET_PAYLOAD }).push(big)).reason).toBe("too-large")
  })
})

// ---------------------------------------------------------------------------
// Unit: protocol.ts
// ---------------------------------------------------------------------------

const handshake = (salt: Uint8Array) =>
  buildHandshakeV10({ serverVersion: "5.5.5-10.11.19-MariaDB-log", connectionId: 42, authPluginData: salt, mariadbCapabilities: 0x1c })

const responseSample = (salt: Uint8Array) =>
  buildHandshakeResponse41({
    capabilities: CLIENT_CAPABILITIES | Capability.ConnectAttrs,
    username: "repl",
    authResponse: scramble("secret", salt),
    database: "db1",
    authPluginName: NATIVE_PASSWORD_PLUGIN,
    attributes: [["_client_name", "phxmaria"], ["_pid", "123"]]
  })

const resultSetSample = () =>
  buildTextResultSet(["a", "b", "c"], [["1", "x", null], ["", null, "long".repeat(100)]])

describe("protocol", () => {
  it("Handshake v10 round-trips", () => {
    const salt = salt20()
    const h = ok(parseHandshakeV10(handshake(salt)))
    expect(h).toEqual({
      protocolVersion: 10,
      serverVersion: "5.5.5-10.11.19-MariaDB-log",
      connectionId: 42,
      authPluginData: salt,
      capabilities: SERVER_CAPABILITIES,
      characterSet: 45,
      statusFlags: 2,
      mariadbCapabilities: 0x1c,
      authPluginName: NATIVE_PASSWORD_PLUGIN
    })
    expect(failure(parseHandshakeV10(buildErr({ code: 1040, sqlState: "08004", message: "Too many connections" }))).message).toContain(
      "Too many connections"
    )
  })

  it("HandshakeResponse41 round-trips with each auth-response encoding", () => {
    const salt = salt20()
    const r = ok(parseHandshakeResponse41(responseSample(salt)))
    expect(r.username).toBe("repl")
    expect(r.database).toBe("db1")
    expect(r.authPluginName).toBe(NATIVE_PASSWORD_PLUGIN)
    expect(r.attributes).toEqual([["_client_name", "phxmaria"], ["_pid", "123"]])
    expect(r.authResponse).toEqual(scramble("secret", salt))
    expect(r.maxPacketSize).toBe(0x40000000)
    for (
      const caps of [
        Capability.Protocol41 | Capability.SecureConnection,
        Capability.Protocol41 | Capability.SecureConnection | Capability.PluginAuth,
        Capability.Protocol41 | Capability.PluginAuthLenencClientData | Capability.PluginAuth | Capability.ConnectAttrs
      ]
    ) {
      const p = ok(parseHandshakeResponse41(buildHandshakeResponse41({ capabilities: caps, username: "u", authResponse: scramble("pw", salt) })))
      expect(p.authResponse).toEqual(scramble("pw", salt))
      expect(p.username).toBe("u")
      expect(p.database).toBe(undefined)
      expect(p.attributes).toEqual([])
    }
    const sslRequest = new PacketWriter().u32(Capability.Protocol41 | Capability.Ssl).u32(0).u8(45).zeros(23).finish()
    expect(failure(parseHandshakeResponse41(sslRequest)).reason).toBe("unsupported")
  })

  it("mysql_native_password scramble verifies only with the right password", () => {
    const salt = salt20()
    const stored = nativePasswordHash("secret")
    // MariaDB's PASSWORD('secret') is '*' + hex(SHA1(SHA1('secret')))
    expect(Buffer.from(stored).toString("hex").toUpperCase()).toBe("14E65567ABDB5135D0CFD9A70B3032C179A49EE7")
    expect(verifyNativePassword(scramble("secret", salt), salt, stored)).toBe(true)
    expect(verifyNativePassword(scramble("secreT", salt), salt, stored)).toBe(false)
    expect(verifyNativePassword(scramble("secret", salt20()), salt, stored)).toBe(false)
    expect(verifyNativePassword(new Uint8Array(0), salt, stored)).toBe(false)
    expect(scramble("", salt).length).toBe(0)
    expect(verifyNativePassword(new Uint8Array(0), salt, new Uint8Array(0))).toBe(true)
    expect(verifyNativePassword(scramble("x", salt), salt, new Uint8Array(0))).toBe(false)
  })

  it("auth switch, OK, ERR, EOF round-trip and classify", () => {
    const salt = salt20()
    expect(ok(parseAuthSwitchRequest(buildAuthSwitchRequest({ pluginName: NATIVE_PASSWORD_PLUGIN, pluginData: salt })))).toEqual({
      pluginName: NATIVE_PASSWORD_PLUGIN,
      pluginData: salt
    })
    const okPacket = { affectedRows: 300, lastInsertId: 2 ** 40, statusFlags: 3, warnings: 1, info: "Rows matched: 1" }
    expect(ok(parseOk(buildOk(okPacket)))).toEqual(okPacket)
    expect(classifyResponse(buildOk())).toBe("ok")
    const e = { code: 1236, sqlState: "HY000", message: "Could not find GTID state requested by slave" }
    expect(ok(parseErr(buildErr(e)))).toEqual(e)
    expect(classifyResponse(buildErr(e))).toBe("err")
    // ERR without SQL state (sent before the handshake completes)
    expect(ok(parseErr(Uint8Array.of(0xff, 0x10, 0x04, 0x41)))).toEqual({ code: 1040, sqlState: "HY000", message: "A" })
    expect(ok(parseEof(buildEof({ warnings: 2, statusFlags: 0x22 })))).toEqual({ warnings: 2, statusFlags: 0x22 })
    expect(classifyResponse(buildEof())).toBe("eof")
    expect(classifyResponse(Uint8Array.of(0xfe, 1, 2, 3, 4, 5, 6, 7, 8))).toBe("other")
    expect(failure(parseEof(buildOk())).reason).toBe("unexpected")
  })

  it("text result sets round-trip, and OK/ERR answers parse as query responses", () => {
    const rs = ok(parseQueryResponse(resultSetSample()))
    expect(rs._tag).toBe("ResultSet")
    if (rs._tag !== "ResultSet") return
    expect(rs.resultSet.columns.map((c) => c.name)).toEqual(["a", "b", "c"])
    expect(rs.resultSet.rows).toEqual([["1", "x", null], ["", null, "long".repeat(100)]])
    expect(ok(parseColumnDefinition(buildColumnDefinition({ name: "n", table: "t", type: 3, flags: 1, decimals: 2 })))).toMatchObject({
      catalog: "def",
      table: "t",
      name: "n",
      type: 3,
      flags: 1,
      decimals: 2
    })
    expect(ok(parseQueryResponse([buildOk({ affectedRows: 5 })]))).toMatchObject({ _tag: "Ok", ok: { affectedRows: 5 } })
    expect(ok(parseQueryResponse([buildErr({ code: 1064, message: "syntax" })]))).toMatchObject({ _tag: "Err", err: { code: 1064 } })
    // ERR after some rows ends the response
    const payloads = resultSetSample()
    const midErr = [...payloads.slice(0, 6), buildErr({ code: 1317, sqlState: "70100", message: "interrupted" })]
    expect(ok(parseQueryResponse(midErr))).toMatchObject({ _tag: "Err", err: { code: 1317, sqlState: "70100" } })
    expect(failure(parseQueryResponse(payloads.slice(0, -1))).reason).toBe("truncated")
    expect(failure(parseQueryResponse([...payloads, buildOk()])).reason).toBe("unexpected")
    expect(ok(parseQueryResponse(buildTextResultSet(["x"], [])))).toMatchObject({ _tag: "ResultSet", resultSet: { rows: [] } })
  })

  it("commands, semi-sync ACK and binlog stream packets round-trip", () => {
    expect(ok(parseComQuery(buildComQuery("SELECT 'é'")))).toBe("SELECT 'é'")
    expect([...buildComQuit()]).toEqual([Command.Quit])
    const reg = { serverId: 7, host: "h", user: "repl", password: "pw", port: 3306, rank: 0, masterId: 0 }
    expect(ok(parseRegisterSlave(buildRegisterSlave(reg)))).toEqual(reg)
    expect(buildRegisterSlave(reg)[0]).toBe(0x15)
    const dump = { position: 4, flags: BinlogDumpFlag.SendAnnotateRows, serverId: 9, fileName: "" }
    expect(ok(parseBinlogDump(buildBinlogDump(dump)))).toEqual(dump)
    expect(ok(parseBinlogDump(buildBinlogDump({ ...dump, fileName: "bin.000002" }))).fileName).toBe("bin.000002")
    const ack = { position: 2 ** 40 + 17, fileName: "bin.000001" }
    expect(ok(parseSemiSyncAck(buildSemiSyncAck(ack)))).toEqual(ack)
    expect([...buildSemiSyncAck({ position: 0x0102, fileName: "f" })]).toEqual([0xef, 2, 1, 0, 0, 0, 0, 0, 0, 0x66])

    const event = randomBytes(prng(3), 40)
    for (const needAck of [true, false]) {
      expect(ok(parseBinlogStreamPacket(buildBinlogEventPacket(event, { semiSync: true, needAck }), { semiSync: true }))).toEqual({
        _tag: "Event",
        needAck,
        event
      })
    }
    expect(ok(parseBinlogStreamPacket(buildBinlogEventPacket(event), { semiSync: false }))).toEqual({ _tag: "Event", needAck: false, event })
    expect(failure(parseBinlogStreamPacket(buildBinlogEventPacket(event), { semiSync: true })).reason).toBe("malformed")
    expect(ok(parseBinlogStreamPacket(buildEof(), { semiSync: true }))).toEqual({ _tag: "Eof" })
    expect(ok(parseBinlogStreamPacket(buildErr({ code: 1236, message: "gone" }), { semiSync: true }))).toMatchObject({
      _tag: "Err",
      err: { code: 1236 }
    })
  })

  it("garbage and truncated input gives a typed error, never a throw or a hang", () => {
    const parsers: ReadonlyArray<readonly [string, (b: Uint8Array) => Result.Result<unknown, PacketError>, ReadonlyArray<Uint8Array>]> = [
      ["ok", parseOk, [buildOk({ affectedRows: 1e9, info: "i" })]],
      ["err", parseErr, [buildErr({ code: 1, message: "m" })]],
      ["eof", parseEof, [buildEof()]],
      ["handshake", parseHandshakeV10, [handshake(salt20())]],
      ["response", parseHandshakeResponse41, [responseSample(salt20())]],
      ["authSwitch", parseAuthSwitchRequest, [buildAuthSwitchRequest({ pluginName: "p", pluginData: salt20() })]],
      ["column", parseColumnDefinition, [buildColumnDefinition({ name: "c" })]],
      ["query", parseComQuery, [buildComQuery("SELECT 1")]],
      ["register", parseRegisterSlave, [buildRegisterSlave({ serverId: 1, host: "h", user: "u", password: "p", port: 1, rank: 0, masterId: 0 })]],
      ["dump", parseBinlogDump, [buildBinlogDump({ position: 4, flags: 0, serverId: 1, fileName: "f" })]],
      ["ack", parseSemiSyncAck, [buildSemiSyncAck({ position: 4, fileName: "f" })]],
      ["event", (b) => parseBinlogStreamPacket(b, { semiSync: true }), [buildBinlogEventPacket(Uint8Array.of(1, 2), { semiSync: true })]],
      ["event-async", (b) => parseBinlogStreamPacket(b, { semiSync: false }), [buildBinlogEventPacket(Uint8Array.of(1, 2))]],
      ["queryResponse", (b) => parseQueryResponse([b]), [buildOk()]]
    ]
    const next = prng(4)
    let failures = 0
    const check = (r: Result.Result<unknown, PacketError>) => {
      expect(Result.isResult(r)).toBe(true)
      if (Result.isFailure(r)) {
        expect(r.failure).toBeInstanceOf(PacketError)
        failures++
      }
    }
    for (const [, parse, samples] of parsers) {
      for (const sample of samples) {
        for (let n = 0; n < sample.length; n++) check(parse(sample.subarray(0, n)))
        for (let i = 0; i < 300; i++) {
          const m = sample.slice()
          for (let k = 0; k < 1 + Math.floor(next() * 4); k++) m[Math.floor(next() * m.length)] = Math.floor(next() * 256)
          check(parse(m))
        }
      }
      for (let i = 0; i < 1000; i++) {
        const g = randomBytes(next, Math.floor(next() * 80))
        if (g.length > 0 && next() < 0.5) g[0] = [0x00, 0x03, 0x0a, 0x12, 0x15, 0xef, 0xfe, 0xff][Math.floor(next() * 8)]!
        check(parse(g))
      }
    }
    // whole result sets: truncated, mutated, and random payload sequences
    const rs = resultSetSample()
    for (let n = 0; n < rs.length; n++) check(parseQueryResponse(rs.slice(0, n)))
    for (let i = 0; i < 500; i++) {
      const m = rs.map((p) => p.slice())
      const p = m[Math.floor(next() * m.length)]!
      if (p.length > 0) p[Math.floor(next() * p.length)] = Math.floor(next() * 256)
      check(parseQueryResponse(m))
      const d = new QueryResponseDecoder()
      for (let k = 0; k < 20; k++) check(d.push(randomBytes(next, Math.floor(next() * 30))))
    }
    // the deframer on garbage: bounded by maxPayloadLength, typed errors only
    for (let i = 0; i < 200; i++) {
      const d = new PacketDecoder({ maxPayloadLength: 1000 })
      for (let k = 0; k < 10; k++) check(d.push(randomBytes(next, Math.floor(next() * 100))))
      expect(d.pendingBytes).toBeLessThan(2000)
    }
    expect(failures).toBeGreaterThan(1000)
  })
})

// ---------------------------------------------------------------------------
// Test-only socket glue: a connection that speaks packets through the codec
// ---------------------------------------------------------------------------

class Conn {
  private readonly decoder = new PacketDecoder()
  private readonly queue: Array<Packet> = []
  private readonly waiters: Array<{ resolve: (p: Packet) => void; reject: (e: Error) => void }> = []
  private error: Error | undefined
  /** Sequence id of the next packet written. */
  seq = 0
  readonly closed: Promise<void>

  constructor(readonly socket: net.Socket) {
    this.closed = new Promise((resolve) => socket.once("close", () => resolve()))
    socket.on("data", (chunk) => {
      const r = this.decoder.push(chunk)
      if (Result.isFailure(r)) return this.fail(r.failure)
      for (const p of r.success) {
        const w = this.waiters.shift()
        if (w) w.resolve(p)
        else this.queue.push(p)
      }
    })
    socket.on("error", (e) => this.fail(e))
    socket.on("close", () => this.fail(new Error("connection closed")))
  }

  private fail(e: Error) {
    this.error ??= e
    for (const w of this.waiters.splice(0)) w.reject(e)
  }

  async read(): Promise<Packet> {
    const p = this.queue.shift() ?? (this.error ? Promise.reject(this.error) : new Promise<Packet>((resolve, reject) => this.waiters.push({ resolve, reject })))
    const packet = await p
    this.seq = packet.nextSequenceId
    return packet
  }

  write(payload: Uint8Array): void {
    const { bytes, nextSequenceId } = encodePackets(this.seq, payload)
    this.seq = nextSequenceId
    this.socket.write(bytes)
  }

  /** A new command: sequence ids restart at 0. */
  command(payload: Uint8Array): void {
    this.seq = 0
    this.write(payload)
  }
}

const connect = (port: number) =>
  Effect.acquireRelease(
    Effect.callback<Conn>((resume) => {
      const socket = net.connect(port, "127.0.0.1")
      const conn = new Conn(socket)
      socket.once("connect", () => resume(Effect.succeed(conn)))
      socket.once("error", (e) => resume(Effect.die(e)))
    }),
    (conn) => Effect.sync(() => conn.socket.destroy())
  )

const live = <A>(f: () => Promise<A>) =>
  Effect.promise(f).pipe(
    Effect.timeoutOrElse({ duration: "20 seconds", orElse: () => Effect.die(new Error(`timed out: ${f.toString()}`)) })
  )

/** Client login with mysql_native_password; follows an auth switch if the server asks for one. */
const login = async (conn: Conn, user: string, password: string) => {
  const hs = ok(parseHandshakeV10((await conn.read()).payload))
  conn.write(
    buildHandshakeResponse41({
      capabilities: (CLIENT_CAPABILITIES | Capability.ConnectAttrs) & hs.capabilities,
      username: user,
      authResponse: scramble(password, hs.authPluginData),
      authPluginName: NATIVE_PASSWORD_PLUGIN,
      attributes: [["_client_name", "phxmaria-test"]]
    })
  )
  let reply = (await conn.read()).payload
  if (reply[0] === 0xfe) {
    const sw = ok(parseAuthSwitchRequest(reply))
    expect(sw.pluginName).toBe(NATIVE_PASSWORD_PLUGIN)
    conn.write(scramble(password, sw.pluginData))
    reply = (await conn.read()).payload
  }
  return { handshake: hs, reply }
}

const query = async (conn: Conn, sql: string): Promise<QueryResponse> => {
  conn.command(buildComQuery(sql))
  const d = new QueryResponseDecoder()
  for (;;) {
    const r = ok(d.push((await conn.read()).payload))
    if (r !== undefined) return r
  }
}

// ---------------------------------------------------------------------------
// Against a real MariaDB server
// ---------------------------------------------------------------------------

describe("against a real MariaDB", () => {
  it.live("logs in with mysql_native_password, queries, parses ERR, dumps the binlog and ACKs semi-sync", () =>
    Effect.gen(function*() {
      const db = yield* MariaDbInstance.make({ extraConfig: { rpl_semi_sync_master_timeout: 20000 } })
      yield* db.query("CREATE USER 'repl'@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING PASSWORD('s3cret!')")
      yield* db.query("GRANT REPLICATION SLAVE, SELECT ON *.* TO 'repl'@'127.0.0.1'")
      yield* db.query("CREATE DATABASE d")
      yield* db.query("CREATE TABLE d.t (id INT PRIMARY KEY)")
      // only now: a semi-sync master without a replica would hold the statements above for the timeout
      yield* db.query("SET GLOBAL rpl_semi_sync_master_enabled = ON")
      const [status] = yield* db.query<{ File: string; Position: number }>("SHOW MASTER STATUS")
      const file = status!.File

      const bad = yield* connect(db.port)
      const denied = yield* live(() => login(bad, "repl", "wrong"))
      expect(ok(parseErr(denied.reply))).toMatchObject({ code: 1045, sqlState: "28000" })

      const conn = yield* connect(db.port)
      const { handshake: hs, reply } = yield* live(() => login(conn, "repl", "s3cret!"))
      expect(hs.serverVersion).toMatch(/^5\.5\.5-10\.11\./)
      expect(hs.authPluginData.length).toBe(20)
      expect(classifyResponse(reply)).toBe("ok")
      const rs = yield* live(() => query(conn, "SELECT 1 AS a, 'x' AS b, NULL AS c"))
      expect(rs._tag).toBe("ResultSet")
      if (rs._tag === "ResultSet") {
        expect(rs.resultSet.columns.map((c) => c.name)).toEqual(["a", "b", "c"])
        expect(rs.resultSet.rows).toEqual([["1", "x", null]])
      }
      expect(yield* live(() => query(conn, "SELEKT nonsense"))).toMatchObject({ _tag: "Err", err: { code: 1064, sqlState: "42000" } })

      // async replica, non-blocking dump: the events, then EOF
      for (const sql of ["SET @master_binlog_checksum = 'CRC32'", "SET @mariadb_slave_capability = 4"]) {
        expect((yield* live(() => query(conn, sql)))._tag).toBe("Ok")
      }
      conn.command(buildRegisterSlave({ serverId: 99, host: "", user: "", password: "", port: 0, rank: 0, masterId: 0 }))
      expect(classifyResponse((yield* live(() => conn.read())).payload)).toBe("ok")
      conn.command(buildBinlogDump({ position: 4, flags: BinlogDumpFlag.NonBlock, serverId: 99, fileName: file }))
      const types: Array<number> = []
      for (;;) {
        const p = ok(parseBinlogStreamPacket((yield* live(() => conn.read())).payload, { semiSync: false }))
        if (p._tag === "Eof") break
        if (p._tag === "Err") throw new Error(`dump failed: ${p.err.code} ${p.err.message}`)
        types.push(p.event[4]!)
      }
      expect(types.slice(0, 2)).toEqual([4, 15]) // fake Rotate, Format_description
      expect(types.length).toBeGreaterThan(4)

      // semi-sync replica: a commit waits until we ACK its position
      const semi = yield* connect(db.port)
      yield* live(() => login(semi, "repl", "s3cret!"))
      for (const sql of ["SET @master_binlog_checksum = 'CRC32'", "SET @mariadb_slave_capability = 4", "SET @rpl_semi_sync_slave = 1"]) {
        expect((yield* live(() => query(semi, sql)))._tag).toBe("Ok")
      }
      semi.command(buildRegisterSlave({ serverId: 98, host: "", user: "", password: "", port: 0, rank: 0, masterId: 0 }))
      expect(classifyResponse((yield* live(() => semi.read())).payload)).toBe("ok")
      semi.command(buildBinlogDump({ position: 4, flags: 0, serverId: 98, fileName: file }))
      const logPos = (event: Uint8Array) => Buffer.from(event).readUInt32LE(13)
      for (;;) {
        const p = ok(parseBinlogStreamPacket((yield* live(() => semi.read())).payload, { semiSync: true }))
        if (p._tag !== "Event") throw new Error(`unexpected ${p._tag}`)
        expect(p.needAck).toBe(false) // all committed before the dump
        if (logPos(p.event) >= status!.Position) break
      }
      const started = Date.now()
      const insert = yield* Effect.forkChild(db.query("INSERT INTO d.t VALUES (1)"))
      let acked: number | undefined
      while (acked === undefined) {
        const p = ok(parseBinlogStreamPacket((yield* live(() => semi.read())).payload, { semiSync: true }))
        if (p._tag !== "Event") throw new Error(`unexpected ${p._tag}`)
        if (p.needAck) {
          acked = logPos(p.event)
          semi.command(buildSemiSyncAck({ position: acked, fileName: file }))
        }
      }
      yield* Fiber.join(insert)
      expect(Date.now() - started).toBeLessThan(10_000) // released by the ACK, not the 20 s timeout
      const yes = yield* db.query<{ Value: string }>("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_yes_tx'")
      expect(yes[0]!.Value).toBe("1")

      const quitter = yield* connect(db.port)
      yield* live(() => login(quitter, "repl", "s3cret!"))
      quitter.command(buildComQuit())
      yield* live(() => quitter.closed)
    }))
})

// ---------------------------------------------------------------------------
// A tiny server speaking our codec to the real mariadb CLI
// ---------------------------------------------------------------------------

/** Serves one connection: handshake, native-password check, a result set for each query. */
const serveConnection = async (socket: net.Socket, users: ReadonlyMap<string, Uint8Array>, log: Array<string>) => {
  const conn = new Conn(socket)
  try {
    const salt = salt20()
    conn.write(buildHandshakeV10({ serverVersion: "5.5.5-10.11.19-MariaDB-phxmaria", connectionId: 7, authPluginData: salt }))
    const response = ok(parseHandshakeResponse41((await conn.read()).payload))
    let authResponse = response.authResponse
    if (response.authPluginName !== undefined && response.authPluginName !== NATIVE_PASSWORD_PLUGIN) {
      conn.write(buildAuthSwitchRequest({ pluginName: NATIVE_PASSWORD_PLUGIN, pluginData: salt }))
      authResponse = (await conn.read()).payload
    }
    const stored = users.get(response.username)
    if (stored === undefined || !verifyNativePassword(authResponse, salt, stored)) {
      conn.write(
        buildErr({
          code: 1045,
          sqlState: "28000",
          message: `Access denied for user '${response.username}'@'127.0.0.1' (using password: ${authResponse.length > 0 ? "YES" : "NO"})`
        })
      )
      socket.end()
      return
    }
    conn.write(buildOk())
    for (;;) {
      const { payload } = await conn.read()
      conn.seq = 1
      if (payload[0] === Command.Quit) return void socket.end()
      if (payload[0] !== Command.Query) {
        conn.write(buildErr({ code: 1047, sqlState: "08S01", message: "Unknown command" }))
        continue
      }
      const sql = ok(parseComQuery(payload))
      log.push(sql)
      for (const p of buildTextResultSet(["answer", "nothing"], [[`echo:${sql}`, null]])) conn.write(p)
    }
  } catch {
    socket.destroy()
  }
}

const runCli = (port: number, password: string, sql: string) =>
  Effect.callback<{ code: number; stdout: string; stderr: string }>((resume) => {
    const child = execFile(
      "/usr/bin/mariadb",
      ["--no-defaults", "-h127.0.0.1", `-P${port}`, "-urepl", `-p${password}`, "--skip-ssl", "-e", sql],
      { timeout: 20_000 },
      (error, stdout, stderr) => resume(Effect.succeed({ code: error === null ? 0 : Number(error.code ?? -1), stdout, stderr }))
    )
    return Effect.sync(() => child.kill("SIGKILL"))
  })

describe("against the real mariadb CLI", () => {
  it.live("logs in to a codec-built server and prints its result set; a wrong password gets ERR 1045", () =>
    Effect.gen(function*() {
      const users = new Map([["repl", nativePasswordHash("pa55word")]])
      const log: Array<string> = []
      const sockets = new Set<net.Socket>()
      const server = yield* Effect.acquireRelease(
        Effect.callback<net.Server>((resume) => {
          const s = net.createServer((socket) => {
            sockets.add(socket)
            socket.once("close", () => sockets.delete(socket))
            void serveConnection(socket, users, log)
          })
          s.listen(0, "127.0.0.1", () => resume(Effect.succeed(s)))
        }),
        // close() waits for open connections: end them first
        (s) => Effect.callback<void>((resume) => {
          for (const socket of sockets) socket.destroy()
          s.close(() => resume(Effect.void))
        })
      )
      const port = (server.address() as net.AddressInfo).port

      const good = yield* runCli(port, "pa55word", "SELECT 1")
      expect(good.stderr).toBe("")
      expect(good.code).toBe(0)
      expect(good.stdout).toBe("answer\tnothing\necho:SELECT 1\tNULL\n")
      expect(log).toContain("SELECT 1")

      const wrong = yield* runCli(port, "nope", "SELECT 1")
      expect(wrong.code).not.toBe(0)
      expect(wrong.stderr).toContain("ERROR 1045 (28000)")
    }))
})
