import * as fs from "node:fs"
import * as net from "node:net"
import * as path from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber, Result } from "effect"
import mysql from "mysql2/promise"
import { EventType, recomputeChecksum, serializeEvent } from "../src/domain/binlog/event.js"
import { parseBinlogFile } from "../src/domain/binlog/file.js"
import { groupTransactions } from "../src/domain/binlog/transaction.js"
import { encodePackets, PacketDecoder } from "../src/domain/mysql/packet.js"
import {
  buildBinlogDump,
  buildComQuery,
  buildHandshakeResponse41,
  parseHandshakeV10,
  scramble
} from "../src/domain/mysql/protocol.js"
import * as BinlogServer from "../src/services/binlog/BinlogServer.js"
import * as BinlogSource from "../src/services/binlog/BinlogSource.js"
import { MariaDbInstance, type MariaDbInstanceInfo } from "./support/MariaDbInstance.js"
import {
  checksums,
  gtidBinlogPos,
  gtidSlavePos,
  mixedWorkload,
  REPL_PASSWORD,
  REPL_USER,
  replicaConfig,
  startReplication,
  waitForReplica
} from "./support/replication.js"

const ok = <A, E>(r: Result.Result<A, E>): A => {
  if (Result.isFailure(r)) throw new Error(`unexpected failure: ${String((r.failure as { message?: string }).message ?? r.failure)}`)
  return r.success
}

const binlogNames = (db: MariaDbInstanceInfo) =>
  Effect.map(db.query<{ Log_name: string }>("SHOW BINARY LOGS"), (rows) => rows.map((r) => r.Log_name))

/** Parses closed binlog files of `db` (names from SHOW BINARY LOGS) into the FDE and source transactions. */
const readBinlogs = (db: MariaDbInstanceInfo, names: ReadonlyArray<string>) =>
  Effect.sync(() => {
    let fde: Uint8Array | undefined
    const txns: Array<BinlogSource.SourceTxn> = []
    for (const name of names) {
      const file = ok(parseBinlogFile(new Uint8Array(fs.readFileSync(path.join(path.dirname(db.binlogBase), name)))))
      fde ??= file.events[0]!.bytes.slice()
      for (const o of ok(groupTransactions(file.events.map((e) => e.bytes), { checksum: file.checksum }))) {
        if (o._tag === "Transaction") txns.push({ gtid: o.gtid, events: o.events.map((e) => e.slice()) })
      }
    }
    return { fde: fde!, txns }
  })

/** Closes the current binlog file and returns the names of the files closed since `known`. */
const flushNew = (db: MariaDbInstanceInfo, known: ReadonlySet<string>) =>
  Effect.gen(function*() {
    yield* db.query("FLUSH BINARY LOGS")
    const names = yield* binlogNames(db)
    return names.slice(0, -1).filter((n) => !known.has(n))
  })

const slaveStatus = (db: MariaDbInstanceInfo) =>
  Effect.map(
    db.query<{ Last_SQL_Errno: number; Last_IO_Errno: number; Last_IO_Error: string; Slave_IO_Running: string }>("SHOW SLAVE STATUS"),
    (rows) => rows[0]
  )

/** Connects raw, reads the greeting, writes `bytes`, resolves when the server closes (with what it sent). */
const rawSession = (port: number, bytes: Uint8Array) =>
  Effect.promise(() =>
    new Promise<{ closed: boolean; received: Buffer }>((resolve) => {
      const socket = net.connect({ host: "127.0.0.1", port })
      const chunks: Array<Buffer> = []
      let wrote = false
      const timer = setTimeout(() => {
        socket.destroy()
        resolve({ closed: false, received: Buffer.concat(chunks) })
      }, 5_000)
      socket.on("data", (c) => {
        chunks.push(c)
        if (!wrote) {
          wrote = true
          socket.write(bytes)
        }
      })
      socket.on("error", () => undefined)
      socket.on("close", () => {
        clearTimeout(timer)
        resolve({ closed: true, received: Buffer.concat(chunks) })
      })
    })
  )

/** A synthetic event of `size` bytes with a valid header and CRC32. */
const fakeEvent = (type: number, size: number): Uint8Array =>
  serializeEvent(recomputeChecksum({
    header: { timestamp: 1, type, serverId: 7, eventSize: size, logPos: 0, flags: 0 },
    body: new Uint8Array(size - 19 - 4).fill(0x61),
    checksum: 0
  }))

/**
 * A raw replica: logs in, sets the heartbeat period, asks for the binlog from the start and
 * hands back the socket (paused) and a decoder fed with everything after the dump request.
 */
const rawReplica = (port: number, user: string, password: string, heartbeatNs: number) =>
  Effect.promise(() =>
    new Promise<{ socket: net.Socket; packets: () => number; bytes: () => number }>((resolve, reject) => {
      const socket = net.connect({ host: "127.0.0.1", port })
      const decoder = new PacketDecoder({ maxPayloadLength: 64 * 1024 * 1024 })
      let stage = 0
      let streamPackets = 0
      let streamBytes = 0
      socket.on("error", reject)
      socket.on("data", (chunk) => {
        const r = decoder.push(chunk)
        if (Result.isFailure(r)) return reject(r.failure)
        for (const p of r.success) {
          if (stage === 0) {
            const hs = ok(parseHandshakeV10(p.payload))
            socket.write(encodePackets(1, buildHandshakeResponse41({ username: user, authResponse: scramble(password, hs.authPluginData) })).bytes)
            stage = 1
          } else if (stage === 1) {
            if (p.payload[0] !== 0) return reject(new Error("login refused"))
            socket.write(encodePackets(0, buildComQuery(`SET @master_heartbeat_period= ${heartbeatNs}`)).bytes)
            stage = 2
          } else if (stage === 2) {
            socket.write(encodePackets(0, buildBinlogDump({ position: 4, flags: 0, serverId: 99, fileName: "" })).bytes)
            stage = 3
            socket.pause()
            resolve({ socket, packets: () => streamPackets, bytes: () => streamBytes })
          } else {
            streamPackets++
            streamBytes += p.payload.length
          }
        }
      })
    })
  )

describe("BinlogServer stream mechanics (raw client)", () => {
  it.live("respects socket backpressure for a replica that does not read, then streams everything and heartbeats", () =>
    Effect.gen(function*() {
      const fde = fakeEvent(EventType.FormatDescription, 120)
      const { source, append } = yield* BinlogSource.makeInMemory(fde)
      const EVENT = 1024 * 1024
      const TXNS = 200
      // Every transaction holds the same bytes: the source itself costs almost nothing.
      const big = fakeEvent(EventType.Query, EVENT)
      for (let seq = 1; seq <= TXNS; seq++) yield* append({ gtid: { domain: 0, server: 7, seq }, events: [big] })
      const server = yield* BinlogServer.make({ host: "127.0.0.1", port: 0, serverId: 1000, user: "u", password: "p" }).pipe(
        Effect.provideService(BinlogSource.BinlogSource, source)
      )
      const before = process.memoryUsage().arrayBuffers
      const replica = yield* rawReplica(server.address.port, "u", "p", 200_000_000)
      yield* Effect.sleep("1500 millis")
      // Unbounded buffering would hold ~200 MiB here.
      const grown = process.memoryUsage().arrayBuffers - before
      expect(grown).toBeLessThan(48 * 1024 * 1024)
      replica.socket.resume()
      // 4 opening events, every transaction, then heartbeats (every 200 ms while idle).
      yield* waitFor(() => replica.packets() >= 4 + TXNS + 3, 30_000)
      expect(replica.bytes()).toBeGreaterThan(TXNS * EVENT)
      expect(yield* server.connections).toBe(1)
      replica.socket.destroy()
      yield* waitFor(() => false, 300).pipe(Effect.ignore)
    }), { timeout: 60_000 })
})

const waitFor = (cond: () => boolean, timeoutMs: number) =>
  Effect.gen(function*() {
    const deadline = Date.now() + timeoutMs
    while (!cond()) {
      if (Date.now() > deadline) return yield* Effect.fail(new Error("condition not reached in time"))
      yield* Effect.sleep("20 millis")
    }
  })

describe("BinlogServer with real MariaDB replicas", () => {
  it.live("serves a replica from a captured binlog, live appends, a SIGKILL of the replica, and hostile clients", () =>
    Effect.gen(function*() {
      const a = yield* MariaDbInstance.make({ serverId: 1 })
      const b = yield* MariaDbInstance.make({ serverId: 2, extraConfig: replicaConfig })

      // --- source: server A's binlog files -----------------------------------------
      const known = new Set(yield* binlogNames(a))
      known.delete([...known].at(-1)!) // the current file will be closed by the flush
      yield* mixedWorkload(a, 2000)
      const batch1Files = yield* flushNew(a, known)
      for (const n of batch1Files) known.add(n)
      const batch1 = yield* readBinlogs(a, batch1Files)
      const pos1 = yield* gtidBinlogPos(a)
      expect(batch1.txns.length).toBeGreaterThan(1900)
      expect(`0-1-${batch1.txns.at(-1)!.gtid.seq}`).toBe(pos1)

      const { source, append } = yield* BinlogSource.makeInMemory(batch1.fde)
      for (const t of batch1.txns) yield* append(t)
      const server = yield* BinlogServer.make({
        host: "127.0.0.1",
        port: 0,
        serverId: 1000,
        user: REPL_USER,
        password: REPL_PASSWORD,
        defaultHeartbeatMs: 1000
      }).pipe(Effect.provideService(BinlogSource.BinlogSource, source))

      // --- initial load --------------------------------------------------------------
      yield* startReplication(b, server.address)
      yield* waitForReplica(b, `the replica to reach ${pos1}`, Effect.map(gtidSlavePos(b), (p) => p === pos1), 120_000)
      expect(yield* checksums(b)).toEqual(yield* checksums(a))
      // Idle: the replica (MASTER_HEARTBEAT_PERIOD=1) receives heartbeats.
      const heartbeats = Effect.map(
        b.query<{ Value: string }>("SHOW GLOBAL STATUS LIKE 'Slave_received_heartbeats'"),
        (rows) => Number(rows[0]?.Value ?? 0)
      )
      const hb0 = yield* heartbeats
      yield* Effect.sleep("2500 millis")
      expect(yield* heartbeats).toBeGreaterThanOrEqual(hb0 + 1)

      // --- hostile clients: the server closes them and goes on -------------------------
      // "GET " reads as a 2 MiB packet header: over the limit.
      const garbage = yield* rawSession(server.address.port, new TextEncoder().encode("GET / HTTP/1.1\r\n\r\n"))
      expect(garbage.closed).toBe(true)
      // A well-sized packet with a wrong sequence id.
      const badSeq = yield* rawSession(server.address.port, Uint8Array.of(1, 0, 0, 7, 0x0e))
      expect(badSeq.closed).toBe(true)
      const denied = yield* Effect.promise(() =>
        mysql.createConnection({ host: "127.0.0.1", port: server.address.port, user: REPL_USER, password: "wrong" })
          .then((c) => {
            c.destroy()
            return undefined
          }, (e: { errno?: number; sqlState?: string; message?: string }) => e)
      )
      expect(denied?.errno).toBe(1045)
      expect(denied?.sqlState).toBe("28000")
      expect(denied?.message).toContain("Access denied")
      // A client that logs in: queries, ping, an unknown command; the connection stays usable.
      const answers = yield* Effect.promise(async () => {
        const c = await mysql.createConnection({ host: "127.0.0.1", port: server.address.port, user: REPL_USER, password: REPL_PASSWORD })
        try {
          const [rows] = await c.query("SHOW VARIABLES LIKE 'SERVER_ID'")
          const unknown = await c.query("SELECT 1").then(() => undefined, (e: { errno?: number }) => e.errno)
          await c.ping()
          const initDb = await c.changeUser({ user: REPL_USER, password: REPL_PASSWORD }).then(
            () => undefined,
            (e: { errno?: number }) => e.errno
          )
          await c.ping()
          return { rows, unknown, initDb }
        } finally {
          c.destroy()
        }
      })
      expect(answers.rows).toEqual([{ Variable_name: "server_id", Value: "1000" }])
      expect(answers.unknown).toBe(1064)
      expect(answers.initDb).toBe(1047)

      // --- live appends, then a SIGKILL of the replica mid-stream ---------------------------
      yield* mixedWorkload(a, 1200, "w2")
      const batch2Files = yield* flushNew(a, known)
      const batch2 = yield* readBinlogs(a, batch2Files)
      const pos2 = yield* gtidBinlogPos(a)
      expect(`0-1-${batch2.txns.at(-1)!.gtid.seq}`).toBe(pos2)
      const half = Math.floor(batch2.txns.length / 2)
      for (const t of batch2.txns.slice(0, half)) yield* append(t)
      const halfPos = `0-1-${batch2.txns[half - 1]!.gtid.seq}`
      yield* waitForReplica(b, `the replica to follow to ${halfPos}`, Effect.map(gtidSlavePos(b), (p) => p === halfPos), 60_000)

      // The rest trickles in while the replica is killed and restarted.
      const trickle = yield* Effect.forkChild(Effect.forEach(
        batch2.txns.slice(half),
        (t, i) => i % 10 === 9 ? Effect.andThen(append(t), Effect.sleep("15 millis")) : append(t),
        { discard: true }
      ))
      const halfSeq = batch2.txns[half - 1]!.gtid.seq
      yield* waitForReplica(b, "the replica to apply some trickled transactions", Effect.map(gtidSlavePos(b), (p) => Number(p.split("-")[2]) >= halfSeq + 50), 60_000)
      yield* b.kill
      yield* Effect.sleep("300 millis")
      yield* b.start
      yield* b.query("START SLAVE")
      yield* Fiber.join(trickle)

      yield* waitForReplica(b, `the replica to reach ${pos2}`, Effect.map(gtidSlavePos(b), (p) => p === pos2), 120_000)
      const status = yield* slaveStatus(b)
      expect(status).toMatchObject({ Last_SQL_Errno: 0, Last_IO_Errno: 0 })
      expect(yield* checksums(b)).toEqual(yield* checksums(a))
      expect(yield* checksums(b, "w2")).toEqual(yield* checksums(a, "w2"))
      expect(yield* server.connections).toBeGreaterThanOrEqual(1)
    }), { timeout: 300_000 })

  it.live("refuses a replica whose position is ahead of the source with ERR 1236", () =>
    Effect.gen(function*() {
      const b2 = yield* MariaDbInstance.make({ serverId: 3, extraConfig: replicaConfig })
      // A local transaction: B2's position 0-3-1 is one the (empty) source does not have.
      yield* b2.query("CREATE DATABASE local_only")
      const { source } = yield* BinlogSource.makeInMemory(new Uint8Array(0))
      const server = yield* BinlogServer.make({ host: "127.0.0.1", port: 0, serverId: 1000, user: REPL_USER, password: REPL_PASSWORD }).pipe(
        Effect.provideService(BinlogSource.BinlogSource, source)
      )
      yield* startReplication(b2, server.address)
      yield* waitForReplica(b2, "the IO thread to stop with 1236", Effect.map(slaveStatus(b2), (s) => s?.Last_IO_Errno === 1236), 60_000)
      const status = yield* slaveStatus(b2)
      expect(status?.Last_IO_Error).toContain("ahead")
      expect(status?.Slave_IO_Running).toBe("No")
    }), { timeout: 120_000 })
})
