/**
 * The capture client on the master side of the commit path: it connects to the local
 * MariaDB as its (only) semi-sync replica, starting after a GTID, and yields whole
 * transactions. The caller ACKs each transaction once it is safely replicated; until then
 * the master holds the commit (AFTER_SYNC, no fallback: docs/mariadb.md, "Semi-sync").
 *
 * Protocol (docs/mariadb.md, "Replication protocol, replica side"): handshake with
 * mysql_native_password, the session variables a semi-sync GTID replica sets,
 * COM_REGISTER_SLAVE, then a *blocking* COM_BINLOG_DUMP (a NonBlock semi-sync dump hangs
 * on 10.11). Each event packet goes through {@link CaptureState}; an ACK is a new packet
 * (sequence id 0) on the same socket.
 *
 * Reconnects happen inside `transactions`: a new dump resumes after the last GTID handed
 * out (per domain), so the stream has no gap and no duplicate. The master re-sends
 * still-unacked transactions after that point with need-ack set.
 */
import * as net from "node:net"
import { Cause, Data, Deferred, Duration, Effect, Queue, Result, Schedule, Scope, Semaphore, Stream } from "effect"
import { type CapturedPart, type CapturedTxn, CaptureState } from "../../domain/binlog/capture.js"
import { formatGtid, type Gtid } from "../../domain/cluster/gtid.js"
import { encodePackets, type Packet, PacketDecoder } from "../../domain/mysql/packet.js"
import {
  buildBinlogDump,
  buildComQuery,
  buildHandshakeResponse41,
  buildRegisterSlave,
  buildSemiSyncAck,
  Capability,
  classifyResponse,
  CLIENT_CAPABILITIES,
  NATIVE_PASSWORD_PLUGIN,
  parseAuthSwitchRequest,
  parseErr,
  parseHandshakeV10,
  QueryResponseDecoder,
  scramble
} from "../../domain/mysql/protocol.js"
import { describeCause } from "../../domain/describe.js"

export type { CapturedPart, CapturedTxn } from "../../domain/binlog/capture.js"

/** Permits of a part in a `partBudget`: one per KiB (never more than the budget has). */
export const partPermits = (part: CapturedPart, budget: PartBudget): number => Math.min(budget.permits, Math.ceil(part.bytes.length / 1024))

/** What parts may hold between MariaDB and the log: `permits` in all, one per KiB. */
export interface PartBudget {
  readonly semaphore: Semaphore.Semaphore
  readonly permits: number
}

// ---------------------------------------------------------------------------
// Options and shape
// ---------------------------------------------------------------------------

export interface CaptureOptions {
  /** The local MariaDB. */
  readonly host: string
  readonly port: number
  /** Unix socket path; when set it is used instead of host/port. */
  readonly socketPath?: string | undefined
  readonly user: string
  readonly password: string
  /** The replica server_id we register with; must differ from the master's. */
  readonly serverId: number
  /** Resume position: transactions after this GTID (null: from the start of the binlog). */
  readonly startAfter: Gtid | null
  /** Master heartbeat period while idle; default 1000 ms. */
  readonly heartbeatMs?: number | undefined
  /** Between failed connection attempts; default exponential from 50 ms capped at 1 s, jittered. */
  readonly reconnect?: Schedule.Schedule<unknown, CaptureError> | undefined
  /** Time allowed for connect + login + dump request; default 10 s. */
  readonly connectTimeoutMs?: number | undefined
  /** Hand out a large transaction's leading bytes in parts of about this size as they arrive (`captured`); default never. */
  readonly partBytes?: number | undefined
  /**
   * Taken before a part is handed out, one permit per KiB, and given back by the consumer
   * once it is done with the part: bounds the parts' bytes held between MariaDB and the log.
   */
  readonly partBudget?: PartBudget | undefined
}

export interface BinlogCaptureShape {
  /**
   * Whole transactions in binlog order. Reconnects inside, resuming after the last GTID
   * handed out (no gap, no duplicate). Fails only on errors a reconnect cannot fix (refused
   * login, a position the master cannot serve) or when the reconnect schedule gives up.
   * One consumer at a time.
   */
  readonly transactions: Stream.Stream<CapturedTxn, CaptureError>
  /** The same, with the parts of large transactions (`partBytes`) before each of them, in binlog order. */
  readonly captured: Stream.Stream<CapturedTxn | CapturedPart, CaptureError>
  /** The master's Format_description event (waits for the first connect). */
  readonly formatDescription: Effect.Effect<Uint8Array>
  /**
   * Semi-sync ACK of (file, end position) on the current connection; ACKing a later position
   * releases every earlier waiter. A no-op while disconnected: after a reconnect from before
   * them the master re-sends unacked transactions with need-ack set.
   */
  readonly ack: (file: string, pos: number) => Effect.Effect<void>
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/** Connecting failed, the connection broke, or the server sent something we cannot read: reconnect. */
export class CaptureConnectionError extends Data.TaggedError("CaptureConnectionError")<{
  readonly address: string
  readonly reason: "connect" | "timeout" | "closed" | "socket" | "protocol"
  readonly detail: string
  readonly cause?: unknown
}> {
  override get message() {
    return `binlog capture connection to ${this.address}: ${this.reason}: ${this.detail}`
  }
}

/** The server refused the login (bad credentials, missing REPLICATION SLAVE, auth plugin): fatal. */
export class CaptureAuthError extends Data.TaggedError("CaptureAuthError")<{
  readonly address: string
  readonly code: number
  readonly detail: string
}> {
  override get message() {
    return `binlog capture login to ${this.address} refused (${this.code}): ${this.detail}`
  }
}

/** An ERR from the server during setup or the dump that a reconnect may fix. */
export class CaptureServerError extends Data.TaggedError("CaptureServerError")<{
  readonly address: string
  readonly stage: "handshake" | "setup" | "register" | "dump"
  readonly code: number
  readonly sqlState: string
  readonly detail: string
}> {
  override get message() {
    return `binlog capture from ${this.address}: ERR ${this.code} (${this.sqlState}) during ${this.stage}: ${this.detail}`
  }
}

/**
 * ERR 1236: the master cannot serve the requested position (purged, not in its binlog, a
 * diverged history). Retrying cannot help: fatal.
 */
export class CapturePositionError extends Data.TaggedError("CapturePositionError")<{
  readonly address: string
  readonly after: string
  readonly code: number
  readonly detail: string
}> {
  override get message() {
    return `the master at ${this.address} cannot stream transactions after '${this.after}' (${this.code}): ${this.detail}`
  }
}

export type CaptureError = CaptureConnectionError | CaptureAuthError | CaptureServerError | CapturePositionError

const ER_MASTER_FATAL_ERROR_READING_BINLOG = 1236
/** A dump that ran this long before breaking resets the reconnect schedule. */
const HEALTHY_MS = 1000

/** Whether a reconnect cannot fix `e`. */
export const isFatal = (e: CaptureError): boolean => e._tag === "CaptureAuthError" || e._tag === "CapturePositionError"

// ---------------------------------------------------------------------------
// One connection
// ---------------------------------------------------------------------------

/**
 * Packets (or their bytes) buffered beyond this pause the socket until the reader catches
 * up: the server's own send buffer then holds the rest (a large transaction is not read
 * into memory ahead of the log).
 */
const HIGH_WATER = 4096
const LOW_WATER = 1024
const HIGH_WATER_BYTES = 8 * 1024 * 1024
const LOW_WATER_BYTES = 2 * 1024 * 1024

interface Wire {
  readonly socket: net.Socket
  readonly read: Effect.Effect<Packet, CaptureConnectionError>
  /** Every packet waiting (at least one): one wake-up per socket read while streaming. */
  readonly readAll: Effect.Effect<ReadonlyArray<Packet>, CaptureConnectionError>
  readonly write: (sequenceId: number, payload: Uint8Array) => void
  /** The server's connection id (from the handshake), for diagnostics. */
  connectionId: number
}


const openWire = (
  options: CaptureOptions,
  address: string
): Effect.Effect<Wire, CaptureConnectionError, Scope.Scope> =>
  Effect.gen(function*() {
    const packets = yield* Queue.unbounded<Packet, CaptureConnectionError>()
    /** Payload bytes in `packets`. */
    const buffered = { bytes: 0 }
    const socket = yield* Effect.acquireRelease(
      Effect.callback<net.Socket, CaptureConnectionError>((resume) => {
        const socket = options.socketPath !== undefined
          ? net.createConnection({ path: options.socketPath })
          : net.createConnection({ host: options.host, port: options.port })
        socket.setNoDelay(true)
        const decoder = new PacketDecoder()
        const broken = (reason: "closed" | "socket" | "protocol", detail: string, cause?: unknown) => {
          Queue.failCauseUnsafe(packets, Cause.fail(new CaptureConnectionError({ address, reason, detail, cause })))
        }
        let connected = false
        socket.once("connect", () => {
          connected = true
          resume(Effect.succeed(socket))
        })
        socket.on("data", (chunk: Buffer) => {
          const r = decoder.push(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength))
          if (Result.isFailure(r)) {
            broken("protocol", r.failure.message, r.failure)
            socket.destroy()
            return
          }
          for (const p of r.success) {
            buffered.bytes += p.payload.length
            Queue.offerUnsafe(packets, p)
          }
          if (Queue.sizeUnsafe(packets) > HIGH_WATER || buffered.bytes > HIGH_WATER_BYTES) socket.pause()
        })
        socket.on("error", (cause) => {
          if (!connected) resume(Effect.fail(new CaptureConnectionError({ address, reason: "connect", detail: describeCause(cause), cause })))
          else broken("socket", describeCause(cause), cause)
        })
        socket.on("close", () => broken("closed", "the server closed the connection"))
        return Effect.sync(() => socket.destroy())
      }),
      (socket) => Effect.sync(() => socket.destroy())
    )
    const taken = (ps: ReadonlyArray<Packet>) => {
      for (const p of ps) buffered.bytes -= p.payload.length
      if (socket.isPaused() && Queue.sizeUnsafe(packets) < LOW_WATER && buffered.bytes < LOW_WATER_BYTES) socket.resume()
    }
    const read = Effect.map(Queue.take(packets), (p) => {
      taken([p])
      return p
    })
    const readAll = Effect.map(Queue.takeBetween(packets, 1, HIGH_WATER), (ps) => {
      taken(ps)
      return ps
    })
    return {
      socket,
      read,
      readAll,
      write: (sequenceId, payload) => {
        if (!socket.destroyed) socket.write(encodePackets(sequenceId, payload).bytes)
      },
      connectionId: 0
    }
  })

const errFrom = (payload: Uint8Array) => {
  const e = parseErr(payload)
  return Result.isSuccess(e) ? e.success : { code: 0, sqlState: "HY000", message: "unparseable ERR packet" }
}

const protocolError = (address: string, detail: string) =>
  new CaptureConnectionError({ address, reason: "protocol", detail })

/** Handshake, mysql_native_password (with an auth switch), OK. */
const login = (wire: Wire, options: CaptureOptions, address: string) =>
  Effect.gen(function*() {
    const hello = yield* wire.read
    if (hello.payload[0] === 0xff) {
      const e = errFrom(hello.payload)
      return yield* new CaptureServerError({ address, stage: "handshake", code: e.code, sqlState: e.sqlState, detail: e.message })
    }
    const hs = parseHandshakeV10(hello.payload)
    if (Result.isFailure(hs)) return yield* protocolError(address, hs.failure.message)
    wire.connectionId = hs.success.connectionId
    const serverCaps = hs.success.capabilities
    if ((serverCaps & Capability.Protocol41) === 0) return yield* protocolError(address, "server does not speak protocol 4.1")
    const salt = hs.success.authPluginData.subarray(0, 20)
    wire.write(
      hello.nextSequenceId,
      buildHandshakeResponse41({
        capabilities: CLIENT_CAPABILITIES & (serverCaps | Capability.LongPassword),
        maxPacketSize: 0x40000000,
        username: options.user,
        authResponse: scramble(options.password, salt),
        authPluginName: NATIVE_PASSWORD_PLUGIN
      })
    )
    let reply = yield* wire.read
    for (let switches = 0; reply.payload[0] === 0xfe && switches < 2; switches++) {
      const sw = parseAuthSwitchRequest(reply.payload)
      if (Result.isFailure(sw)) return yield* protocolError(address, sw.failure.message)
      if (sw.success.pluginName !== NATIVE_PASSWORD_PLUGIN) {
        return yield* new CaptureAuthError({ address, code: 0, detail: `server asks for auth plugin ${sw.success.pluginName}; only ${NATIVE_PASSWORD_PLUGIN} is supported` })
      }
      wire.write(reply.nextSequenceId, scramble(options.password, sw.success.pluginData.subarray(0, 20)))
      reply = yield* wire.read
    }
    const kind = classifyResponse(reply.payload)
    if (kind === "err") {
      const e = errFrom(reply.payload)
      return yield* new CaptureAuthError({ address, code: e.code, detail: e.message })
    }
    if (kind !== "ok") return yield* protocolError(address, `unexpected login reply 0x${(reply.payload[0] ?? 0).toString(16)}`)
  })

/** One command whose reply is OK (or a result set, which is read and dropped); ERR fails. */
const command = (wire: Wire, payload: Uint8Array, stage: "setup" | "register", address: string, what: string) =>
  Effect.gen(function*() {
    wire.write(0, payload)
    const decoder = new QueryResponseDecoder()
    while (true) {
      const p = yield* wire.read
      const r = decoder.push(p.payload)
      if (Result.isFailure(r)) return yield* protocolError(address, `${what}: ${r.failure.message}`)
      const response = r.success
      if (response === undefined) continue
      if (response._tag === "Err") {
        const e = response.err
        const detail = `${what}: ${e.message}`
        return yield* (e.code === 1045 || e.code === 1227 || e.code === 1044
          ? new CaptureAuthError({ address, code: e.code, detail })
          : new CaptureServerError({ address, stage, code: e.code, sqlState: e.sqlState, detail }))
      }
      return
    }
  })

// ---------------------------------------------------------------------------
// make
// ---------------------------------------------------------------------------

const defaultReconnect: Schedule.Schedule<unknown, CaptureError> = Schedule.exponential("50 millis").pipe(
  Schedule.modifyDelay(({ duration }) => Effect.succeed(Duration.min(duration, Duration.seconds(1)))),
  Schedule.jittered
)

/** The connect state: the last GTID handed out in each domain. */
const connectState = (last: ReadonlyMap<number, Gtid>): string =>
  [...last.values()].map(formatGtid).join(",")

export const make = (options: CaptureOptions): Effect.Effect<BinlogCaptureShape, never, Scope.Scope> =>
  Effect.gen(function*() {
    const address = options.socketPath ?? `${options.host}:${options.port}`
    const heartbeatNs = BigInt(options.heartbeatMs ?? 1000) * 1_000_000n
    const reconnect = options.reconnect ?? defaultReconnect
    const connectTimeout = options.connectTimeoutMs ?? 10_000
    const fde = yield* Deferred.make<Uint8Array>()
    /** Last GTID handed out, per domain. */
    const last = new Map<number, Gtid>()
    if (options.startAfter !== null) last.set(options.startAfter.domain, options.startAfter)
    /** The connection currently streaming (ACKs go there). */
    let current: Wire | undefined
    /**
     * The highest position the caller ACKed. A reconnect resumes after the last GTID handed
     * out, so a transaction handed out but ACKed while disconnected is not sent again: the
     * new connection repeats this ACK (harmless when it already reached the master).
     */
    let highestAck: { readonly file: string; readonly pos: number } | undefined

    const sendAck = (wire: Wire, a: { readonly file: string; readonly pos: number }) =>
      wire.write(0, buildSemiSyncAck({ position: a.pos, fileName: a.file }))

    const ack = (file: string, pos: number) =>
      Effect.sync(() => {
        if (highestAck === undefined || file > highestAck.file || (file === highestAck.file && pos > highestAck.pos)) {
          highestAck = { file, pos }
        }
        const wire = current
        if (wire === undefined || wire.socket.destroyed) return
        sendAck(wire, { file, pos })
      })

    /**
     * Connect, log in, start the dump, stream until the connection breaks. Fails before the
     * dump streams; once it streams, a transient break ends the session normally (the caller
     * reconnects with a fresh schedule) and a fatal one fails.
     */
    const session = (out: Queue.Queue<CapturedTxn | CapturedPart, CaptureError | Cause.Done>) =>
      Effect.scoped(Effect.gen(function*() {
        const after = connectState(last)
        const wire = yield* Effect.gen(function*() {
          const wire = yield* openWire(options, address)
          yield* login(wire, options, address)
          const setup = [
            "SET @master_binlog_checksum='CRC32'",
            "SET @mariadb_slave_capability=4",
            `SET @slave_connect_state='${after}'`,
            "SET @slave_gtid_strict_mode=1",
            `SET @master_heartbeat_period=${heartbeatNs}`,
            "SET @rpl_semi_sync_slave=1"
          ]
          for (const sql of setup) yield* command(wire, buildComQuery(sql), "setup", address, sql)
          yield* command(
            wire,
            buildRegisterSlave({ serverId: options.serverId, host: "", user: "", password: "", port: 0, rank: 0, masterId: 0 }),
            "register",
            address,
            "COM_REGISTER_SLAVE"
          )
          // Blocking dump (flags 0): a NonBlock semi-sync dump hangs on 10.11.
          wire.write(0, buildBinlogDump({ position: 4, flags: 0, serverId: options.serverId, fileName: "" }))
          return wire
        }).pipe(
          Effect.timeoutOrElse({
            duration: Duration.millis(connectTimeout),
            orElse: () =>
              Effect.fail(new CaptureConnectionError({ address, reason: "timeout", detail: `no dump within ${connectTimeout} ms` }))
          })
        )
        yield* Effect.logDebug(`binlog capture: dumping from ${address} after '${after}' (connection ${wire.connectionId})`)
        yield* Effect.addFinalizer(() => Effect.sync(() => {
          if (current === wire) current = undefined
        }))

        let state: CaptureState | undefined
        const streamed: Effect.Effect<never, CaptureError> = Effect.gen(function*() {
          while (true) {
            for (const { payload } of yield* wire.readAll) {
              if (payload[0] === 0xff) {
                const e = errFrom(payload)
                return yield* (e.code === ER_MASTER_FATAL_ERROR_READING_BINLOG
                  ? new CapturePositionError({ address, after: connectState(last), code: e.code, detail: e.message })
                  : new CaptureServerError({ address, stage: "dump", code: e.code, sqlState: e.sqlState, detail: e.message }))
              }
              if (classifyResponse(payload) === "eof") {
                return yield* new CaptureConnectionError({ address, reason: "closed", detail: "the dump ended (EOF)" })
              }
              // The first packet is the artificial Rotate (timestamp 0): a semi-sync header shows
              // as 0xEF right after the 0x00.
              if (state === undefined) {
                const semiSync = payload.length > 1 && payload[1] === 0xef
                state = new CaptureState(semiSync, options.partBytes)
                // The dump has started (the master listens for ACKs from now on).
                current = wire
                if (semiSync && highestAck !== undefined) sendAck(wire, highestAck)
              }
              const r = state.push(payload, performance.now())
              if (Result.isFailure(r)) return yield* protocolError(address, r.failure.message)
              for (const o of r.success) {
                if (o._tag === "FormatDescription") {
                  yield* Deferred.succeed(fde, o.bytes)
                  continue
                }
                if (o._tag === "Part") {
                  if (options.partBudget !== undefined) yield* options.partBudget.semaphore.take(partPermits(o.part, options.partBudget))
                  yield* Queue.offer(out, o.part)
                  continue
                }
                const txn = o.txn
                const prev = last.get(txn.gtid.domain)
                if (prev !== undefined && txn.gtid.seq <= prev.seq) {
                  // Already handed out (never expected with a GTID connect state).
                  yield* Effect.logWarning(`binlog capture: skipping ${formatGtid(txn.gtid)}, already handed out ${formatGtid(prev)}`)
                  continue
                }
                yield* Queue.offer(out, txn)
                last.set(txn.gtid.domain, txn.gtid)
              }
            }
          }
        })
        const dumpStarted = Date.now()
        yield* streamed.pipe(
          Effect.catch((e) =>
            // A connection that broke soon after the dump started counts as a failed attempt
            // (the reconnect schedule applies, e.g. two clients with one server_id kicking each
            // other out); after a healthy stretch the next attempt is immediate, the schedule fresh.
            isFatal(e) || Date.now() - dumpStarted < HEALTHY_MS
              ? Effect.fail(e)
              : Effect.logWarning(`binlog capture: connection lost, reconnecting: ${e.message}`)
          )
        )
      }))

    const captured = Stream.callback<CapturedTxn | CapturedPart, CaptureError>(
      (out) =>
        session(out).pipe(
          Effect.tapError((e) =>
            isFatal(e)
              ? Effect.logError(`binlog capture: ${e.message}`)
              : Effect.logWarning(`binlog capture: ${e.message}; retrying`)
          ),
          Effect.retry({ schedule: reconnect, while: (e) => !isFatal(e) }),
          Effect.forever
        ),
      { bufferSize: 64, strategy: "suspend" }
    )

    const transactions = Stream.filter(captured, (c): c is CapturedTxn => !("part" in c))
    return { transactions, captured, formatDescription: Deferred.await(fde), ack } satisfies BinlogCaptureShape
  })
