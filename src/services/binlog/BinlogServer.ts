/**
 * The master side of MariaDB's replication protocol (docs/mariadb.md, "Replication
 * protocol, master side"): a real MariaDB 10.11
 * replica `CHANGE MASTER TO` this server and replicates the transactions of the
 * {@link BinlogSource}.
 *
 * Per connection: HandshakeV10 with mysql_native_password, one accepted login, the
 * replica's setup queries (answered by `domain/replicaSession.ts`), COM_REGISTER_SLAVE,
 * then COM_BINLOG_DUMP: the stream opening (`domain/binlog/dumpStream.ts`), every
 * transaction after the replica's GTID, and heartbeats while idle, until the replica
 * goes away. Writes respect socket backpressure: a slow replica slows its stream, it
 * never makes this process buffer without bound.
 *
 * Input is hostile: garbage, oversized packets, bad sequence ids or commands before
 * login close that connection with a typed, logged error; nothing else is affected.
 */
import { randomBytes } from "node:crypto"
import * as net from "node:net"
import { Context, Data, Duration, Effect, Layer, Result } from "effect"
import type * as Scope from "effect/Scope"
import { DumpStream } from "../../domain/binlog/dumpStream.js"
import { type Gtid, parseGtid } from "../../domain/cluster/gtid.js"
import { encodePackets, encodePacketSequence, type Packet, PacketDecoder } from "../../domain/mysql/packet.js"
import {
  buildBinlogEventPacket,
  buildErr,
  buildHandshakeV10,
  buildOk,
  buildTextResultSet,
  Command,
  nativePasswordHash,
  NATIVE_PASSWORD_PLUGIN,
  parseBinlogDump,
  parseComQuery,
  parseHandshakeResponse41,
  parseRegisterSlave,
  verifyNativePassword
} from "../../domain/mysql/protocol.js"
import { answerQuery, newReplicaSession, positionFromConnectState, type ReplicaSession } from "../../domain/mysql/replicaSession.js"
import { BinlogSource, type SourceReadError } from "./BinlogSource.js"
import * as TcpListener from "../net/TcpListener.js"
import { describeCause } from "../../domain/describe.js"
import { writeAll } from "../net/writeAll.js"

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

export interface BinlogServerOptions {
  readonly host: string
  /** 0 picks a free port; the bound one is in {@link BinlogServerShape.address}. */
  readonly port: number
  /** What `SHOW VARIABLES LIKE 'SERVER_ID'` answers; must differ from every replica's. */
  readonly serverId: number
  /** The one replication login accepted (mysql_native_password). */
  readonly user: string
  readonly password: string
  /** Name of the virtual binlog file; default "phxmaria-bin.000001". */
  readonly fileName?: string
  /** Heartbeat period when the replica sets none; default 30 s (MariaDB's default). */
  readonly defaultHeartbeatMs?: number
}

export interface BinlogServerShape {
  /** The address actually bound. */
  readonly address: { readonly host: string; readonly port: number }
  /** Connections currently open (any phase). */
  readonly connections: Effect.Effect<number>
}

export class BinlogServer extends Context.Service<BinlogServer, BinlogServerShape>()("phxmaria/BinlogServer") {}

export const SERVER_VERSION = "5.5.5-10.11.19-MariaDB-phxmaria"
export const DEFAULT_FILE_NAME = "phxmaria-bin.000001"
const DEFAULT_HEARTBEAT_MS = 30_000
/** Commands of a replica (and the handshake response) are small; anything bigger is hostile. */
const MAX_COMMAND_BYTES = 1024 * 1024
/** Time a client has to send its handshake response. */
const LOGIN_TIMEOUT: Duration.Input = "10 seconds"
/** Grace for a final ERR to reach the client before the socket is destroyed. */
const ERR_LINGER: Duration.Input = "2 seconds"
/** Bytes of framed transactions put in one socket write at most. */
const WRITE_BYTES = 1024 * 1024

/** Events in consecutive groups of about `bytes` (at least one event each); one group when they fit. */
const groupsOf = (events: ReadonlyArray<Uint8Array>, bytes: number): Array<ReadonlyArray<Uint8Array>> => {
  const groups: Array<ReadonlyArray<Uint8Array>> = []
  let start = 0
  let size = 0
  for (let i = 0; i < events.length; i++) {
    if (i > start && size + events[i]!.length > bytes) {
      groups.push(events.slice(start, i))
      start = i
      size = 0
    }
    size += events[i]!.length
  }
  groups.push(start === 0 ? events : events.slice(start))
  return groups
}
/** Commands received ahead of the command loop before the socket is paused. */
const MAX_INBOX = 8
/** The longest a stream goes on in microtasks, its event loop not polling (see Connection.onDrain). */
const STREAM_SLICE_MS = 100

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

export class BinlogServerListenError extends Data.TaggedError("BinlogServerListenError")<{
  readonly host: string
  readonly port: number
  readonly cause: unknown
}> {
  override get message() {
    return `binlog server cannot listen on ${this.host}:${this.port}: ${describeCause(this.cause)}`
  }
}

/** The client broke the protocol (garbage, oversized or mis-sequenced packets, wrong command). */
export class BinlogServerProtocolError extends Data.TaggedError("BinlogServerProtocolError")<{
  readonly remote: string
  readonly reason: string
}> {
  override get message() {
    return `protocol error from ${this.remote}: ${this.reason}`
  }
}

export class BinlogServerAuthError extends Data.TaggedError("BinlogServerAuthError")<{
  readonly remote: string
  readonly user: string
}> {
  override get message() {
    return `access denied for user '${this.user}' from ${this.remote}`
  }
}

/** The dump could not be served (position unknown, source event unusable, source ended). */
export class BinlogServerDumpError extends Data.TaggedError("BinlogServerDumpError")<{
  readonly remote: string
  readonly reason: string
}> {
  override get message() {
    return `binlog dump to ${this.remote} ended: ${this.reason}`
  }
}

export class BinlogServerSocketError extends Data.TaggedError("BinlogServerSocketError")<{
  readonly remote: string
  readonly cause: unknown
}> {
  override get message() {
    return `socket error on ${this.remote}: ${describeCause(this.cause)}`
  }
}

export class BinlogServerTimeout extends Data.TaggedError("BinlogServerTimeout")<{
  readonly remote: string
  readonly what: string
}> {
  override get message() {
    return `${this.remote}: timed out waiting for ${this.what}`
  }
}

/** The client closed the connection (orderly, or COM_QUIT). */
export class BinlogServerClosed extends Data.TaggedError("BinlogServerClosed")<{
  readonly remote: string
}> {
  override get message() {
    return `connection from ${this.remote} closed`
  }
}

export type BinlogServerConnectionError =
  | BinlogServerProtocolError
  | BinlogServerAuthError
  | BinlogServerDumpError
  | BinlogServerSocketError
  | BinlogServerTimeout
  | BinlogServerClosed


// ---------------------------------------------------------------------------
// Connection: one socket, MySQL packets in, bytes out with backpressure
// ---------------------------------------------------------------------------

/**
 * Callback-level wrapper of a net.Socket. Handlers are attached in the constructor, so a
 * socket 'error' is never unhandled. Received packets wait in a small inbox (the socket is
 * paused while it is full); fibers take them with {@link receive}.
 */
class Connection {
  private readonly decoder = new PacketDecoder({ maxPayloadLength: MAX_COMMAND_BYTES })
  private readonly inbox: Array<Packet> = []
  private waiter: (() => void) | undefined = undefined
  private drainWaiters: Array<() => void> = []
  /** Since when 'drain' has followed 'drain' in microtasks, and whether the loop has turned since (see onDrain). */
  private chainStart = 0
  private loopTurned = true
  private closeError: BinlogServerConnectionError | undefined = undefined
  private readonly closeListeners = new Set<(error: BinlogServerConnectionError) => void>()
  /** While streaming, the client has nothing to say: any packet but COM_QUIT is an error. */
  private streaming = false

  constructor(readonly socket: net.Socket, readonly remote: string) {
    socket.setNoDelay(true)
    socket.setKeepAlive(true, 10_000)
    socket.on("data", (chunk: Buffer) => this.onData(chunk))
    socket.on("end", () =>
      this.close(
        this.decoder.pendingBytes > 0
          ? new BinlogServerProtocolError({ remote, reason: `connection ended inside a packet (${this.decoder.pendingBytes} bytes)` })
          : new BinlogServerClosed({ remote })
      ))
    socket.on("error", (cause) => this.close(new BinlogServerSocketError({ remote, cause })))
    socket.on("close", () => this.close(new BinlogServerClosed({ remote })))
    socket.on("drain", () => this.onDrain())
  }

  get closed(): BinlogServerConnectionError | undefined {
    return this.closeError
  }

  startStreaming(): void {
    this.streaming = true
    for (const p of this.inbox.splice(0)) this.onStreamPacket(p)
    if (this.socket.isPaused()) this.socket.resume()
  }

  /** The next packet; fails once the connection is closed. */
  readonly receive: Effect.Effect<Packet, BinlogServerConnectionError> = Effect.callback((resume) => {
    // Resuming may run the fiber on synchronously into the next receive, which installs
    // its own waiter: clear ours before resuming, never after.
    const attempt = (): boolean => {
      const packet = this.inbox.shift()
      if (packet !== undefined) {
        if (this.inbox.length < MAX_INBOX && this.socket.isPaused() && this.closeError === undefined) this.socket.resume()
        if (this.waiter === waiter) this.waiter = undefined
        resume(Effect.succeed(packet))
        return true
      }
      if (this.closeError !== undefined) {
        if (this.waiter === waiter) this.waiter = undefined
        resume(Effect.fail(this.closeError))
        return true
      }
      return false
    }
    const waiter = () => {
      attempt()
    }
    if (attempt()) return
    this.waiter = waiter
    return Effect.sync(() => {
      if (this.waiter === waiter) this.waiter = undefined
    })
  })

  /**
   * Writes `bytes` (several buffers go out corked, as one writev: never joined into a copy);
   * when the socket's buffer is over its high-water mark, waits for 'drain'.
   */
  send(bytes: Uint8Array | ReadonlyArray<Uint8Array>): Effect.Effect<void, BinlogServerConnectionError> {
    return Effect.callback((resume) => {
      if (this.closeError !== undefined) return resume(Effect.fail(this.closeError))
      if (writeAll(this.socket, bytes instanceof Uint8Array ? [bytes] : bytes)) return resume(Effect.void)
      const done = () => {
        this.closeListeners.delete(onClose)
        resume(this.closeError !== undefined ? Effect.fail(this.closeError) : Effect.void)
      }
      const onClose = () => done()
      this.closeListeners.add(onClose)
      this.drainWaiters.push(done)
      return Effect.sync(() => {
        this.closeListeners.delete(onClose)
        this.drainWaiters = this.drainWaiters.filter((w) => w !== done)
      })
    })
  }

  /** Fails with the close reason once the connection closes. */
  readonly awaitClosed: Effect.Effect<never, BinlogServerConnectionError> = Effect.callback((resume) => {
    if (this.closeError !== undefined) return resume(Effect.fail(this.closeError))
    const listener = (error: BinlogServerConnectionError) => resume(Effect.fail(error))
    this.closeListeners.add(listener)
    return Effect.sync(() => {
      this.closeListeners.delete(listener)
    })
  })

  /** Sends `last` (an ERR), half-closes, and waits (bounded) for the client to go. */
  endWith(last: Uint8Array): Effect.Effect<void> {
    return Effect.suspend(() => {
      if (this.closeError !== undefined) return Effect.void
      this.socket.end(last)
      return this.awaitClosed.pipe(
        Effect.timeoutOption(ERR_LINGER),
        Effect.exit,
        Effect.asVoid
      )
    })
  }

  /** Closes with `error` (the first reason wins) and destroys the socket. */
  close(error: BinlogServerConnectionError): void {
    if (this.closeError !== undefined) return
    this.closeError = error
    this.inbox.length = 0
    this.socket.destroy()
    this.wakeDrain()
    const listeners = [...this.closeListeners]
    this.closeListeners.clear()
    for (const l of listeners) l(error)
    this.waiter?.()
  }

  /**
   * A write the kernel takes at once emits 'drain' from a nextTick, and the stream's next
   * read and write follow in microtasks: a large transaction (or a catch-up) went out
   * without the event loop polling, and Paxos messages (the lease's renewals) waited 1-1.7
   * s behind a 100 MB transaction. Such a chain goes on in a macrotask once it has run
   * STREAM_SLICE_MS. A 'drain' after the loop has turned (the immediate queued when the
   * chain began has run) starts a new chain. Yielding at every 'drain', or after 10 ms,
   * halved the rate a catching-up replica's MariaDB was fed at (bench:catchup 104-120+ s
   * against 33-63 s); 100 ms is short against the lease's renewals (every 667 ms).
   */
  private onDrain(): void {
    const now = performance.now()
    if (this.loopTurned) {
      this.loopTurned = false
      this.chainStart = now
      setImmediate(() => {
        this.loopTurned = true
      })
    } else if (now - this.chainStart >= STREAM_SLICE_MS) {
      // Queued after the immediate above: the loop has turned when the stream goes on.
      setImmediate(() => this.wakeDrain())
      return
    }
    this.wakeDrain()
  }

  private wakeDrain(): void {
    const waiters = this.drainWaiters
    this.drainWaiters = []
    for (const w of waiters) w()
  }

  private onData(chunk: Uint8Array): void {
    if (this.closeError !== undefined) return
    const r = this.decoder.push(chunk)
    if (Result.isFailure(r)) {
      return this.close(new BinlogServerProtocolError({ remote: this.remote, reason: r.failure.message }))
    }
    for (const p of r.success) {
      if (this.closeError !== undefined) return
      if (this.streaming) this.onStreamPacket(p)
      else this.inbox.push(p)
    }
    if (this.inbox.length >= MAX_INBOX && !this.socket.isPaused()) this.socket.pause()
    this.waiter?.()
  }

  private onStreamPacket(p: Packet): void {
    this.close(
      p.payload.length === 1 && p.payload[0] === Command.Quit
        ? new BinlogServerClosed({ remote: this.remote })
        : new BinlogServerProtocolError({ remote: this.remote, reason: "data from the replica during the binlog stream" })
    )
  }
}


/** Frames payloads with consecutive sequence ids starting at `seq`. */
const frameAll = (seq: number, payloads: ReadonlyArray<Uint8Array>): Uint8Array => encodePacketSequence(seq, payloads).bytes

/** 20 printable, non-NUL bytes. */
const makeScramble = (): Uint8Array => Uint8Array.from(randomBytes(20), (b) => 33 + (b % 94))

const connectStateGtids = (state: string | undefined): ReadonlyArray<Gtid> =>
  (state ?? "").split(",").map((s) => parseGtid(s.trim())).filter((g): g is Gtid => g !== undefined)

/** Orderly closes are routine; everything else is worth a warning. */
const logClose = (error: BinlogServerConnectionError) =>
  error._tag === "BinlogServerClosed"
    ? Effect.logDebug(`binlog server: ${error.message}`)
    : Effect.logWarning(`binlog server: connection closed: ${error.message}`, error)

// ---------------------------------------------------------------------------
// make
// ---------------------------------------------------------------------------

export const make = (
  options: BinlogServerOptions
): Effect.Effect<BinlogServerShape, BinlogServerListenError, Scope.Scope | BinlogSource> =>
  Effect.gen(function*() {
    const source = yield* BinlogSource
    const fileName = options.fileName ?? DEFAULT_FILE_NAME
    const storedHash = nativePasswordHash(options.password)
    let nextConnectionId = 1

    // --- one connection ------------------------------------------------------
    const login = (conn: Connection): Effect.Effect<void, BinlogServerConnectionError> =>
      Effect.gen(function*() {
        const remote = conn.remote
        const scramble = makeScramble()
        yield* conn.send(frameAll(0, [buildHandshakeV10({ serverVersion: SERVER_VERSION, connectionId: nextConnectionId++, authPluginData: scramble })]))
        const packet = yield* conn.receive.pipe(
          Effect.timeoutOrElse({ duration: LOGIN_TIMEOUT, orElse: () => Effect.fail(new BinlogServerTimeout({ remote, what: "the handshake response" })) })
        )
        if (packet.sequenceId !== 1) {
          return yield* new BinlogServerProtocolError({ remote, reason: `handshake response with sequence id ${packet.sequenceId}, expected 1` })
        }
        const parsed = parseHandshakeResponse41(packet.payload)
        if (Result.isFailure(parsed)) {
          return yield* new BinlogServerProtocolError({ remote, reason: `bad handshake response: ${parsed.failure.message}` })
        }
        const response = parsed.success
        const pluginOk = response.authPluginName === undefined || response.authPluginName === "" ||
          response.authPluginName === NATIVE_PASSWORD_PLUGIN
        const accepted = pluginOk && response.username === options.user &&
          verifyNativePassword(response.authResponse, scramble, storedHash)
        if (!accepted) {
          const host = conn.socket.remoteAddress ?? "?"
          yield* conn.endWith(frameAll(packet.nextSequenceId, [buildErr({
            code: 1045,
            sqlState: "28000",
            message: `Access denied for user '${response.username.slice(0, 64)}'@'${host}' (using password: ${response.authResponse.length > 0 ? "YES" : "NO"})`
          })]))
          return yield* new BinlogServerAuthError({ remote, user: response.username.slice(0, 64) })
        }
        yield* conn.send(frameAll(packet.nextSequenceId, [buildOk()]))
      })

    const commandLoop = (conn: Connection): Effect.Effect<never, BinlogServerConnectionError> =>
      Effect.gen(function*() {
        const remote = conn.remote
        let session: ReplicaSession = newReplicaSession
        while (true) {
          const packet = yield* conn.receive
          if (packet.sequenceId !== 0) {
            return yield* new BinlogServerProtocolError({ remote, reason: `command with sequence id ${packet.sequenceId}, expected 0` })
          }
          const reply = (...payloads: ReadonlyArray<Uint8Array>) => conn.send(frameAll(packet.nextSequenceId, payloads))
          const command = packet.payload[0]
          switch (command) {
            case Command.Query: {
              const sql = parseComQuery(packet.payload)
              if (Result.isFailure(sql)) return yield* new BinlogServerProtocolError({ remote, reason: sql.failure.message })
              const [answer, next] = answerQuery(sql.success, session, {
                serverId: options.serverId,
                nowSeconds: Math.floor(Date.now() / 1000)
              })
              session = next
              yield* Effect.logDebug(`binlog server: query from ${remote}: ${sql.success.slice(0, 200)} -> ${answer._tag}`)
              switch (answer._tag) {
                case "Ok":
                  yield* reply(buildOk())
                  break
                case "ResultSet":
                  yield* reply(...buildTextResultSet(answer.columns, answer.rows))
                  break
                case "Error":
                  yield* reply(buildErr({ code: answer.code, sqlState: answer.sqlState, message: answer.message }))
                  break
              }
              break
            }
            case Command.RegisterSlave: {
              const reg = parseRegisterSlave(packet.payload)
              if (Result.isFailure(reg)) return yield* new BinlogServerProtocolError({ remote, reason: reg.failure.message })
              yield* Effect.logInfo(`binlog server: replica server_id ${reg.success.serverId} registered from ${remote}`)
              yield* reply(buildOk())
              break
            }
            case Command.Ping:
              yield* reply(buildOk())
              break
            case Command.Quit:
              return yield* new BinlogServerClosed({ remote })
            case Command.BinlogDump: {
              const dump = parseBinlogDump(packet.payload)
              if (Result.isFailure(dump)) return yield* new BinlogServerProtocolError({ remote, reason: dump.failure.message })
              return yield* streamBinlog(conn, session, packet.nextSequenceId).pipe(
                Effect.annotateLogs({ replicaServerId: dump.success.serverId })
              )
            }
            case undefined:
              return yield* new BinlogServerProtocolError({ remote, reason: "empty command packet" })
            default:
              yield* reply(buildErr({ code: 1047, sqlState: "08S01", message: "Unknown command" }))
          }
        }
      })

    const streamBinlog = (
      conn: Connection,
      session: ReplicaSession,
      firstSeq: number
    ): Effect.Effect<never, BinlogServerConnectionError> =>
      Effect.scoped(Effect.gen(function*() {
        const remote = conn.remote
        // ERR 1236 ends the replica's IO thread (it does not retry by itself).
        const refuse = (message: string) =>
          Effect.andThen(
            conn.endWith(frameAll(firstSeq, [buildErr({ code: 1236, sqlState: "HY000", message })])),
            Effect.fail(new BinlogServerDumpError({ remote, reason: message }))
          )
        const position = positionFromConnectState(session.connectState)
        if (position !== null && "error" in position) return yield* refuse(position.error)
        // A source that cannot read ends the stream without ERR 1236: the replica reconnects.
        const unreadable = (e: SourceReadError) =>
          Effect.fail(new BinlogServerDumpError({ remote, reason: `the binlog source cannot read: ${String(e.cause)}` }))
        const cursor = yield* source.after(position).pipe(
          Effect.catchTag("UnknownPosition", (e) => refuse(e.message)),
          Effect.catchTag("SourceReadError", unreadable)
        )
        const fde = yield* source.formatDescription
        const dump = new DumpStream({ fileName, serverId: options.serverId })
        const opening = dump.opening(fde, connectStateGtids(session.connectState))
        if (Result.isFailure(opening)) return yield* refuse(`cannot open the binlog stream: ${opening.failure.message}`)

        let seq = firstSeq
        const sendEvents = (events: ReadonlyArray<Uint8Array>) =>
          Effect.forEach(events, (event) => {
            const framed = encodePackets(seq, buildBinlogEventPacket(event))
            seq = framed.nextSequenceId
            return conn.send(framed.bytes)
          }, { discard: true })

        conn.startStreaming()
        yield* sendEvents(opening.success)
        const heartbeatNs = session.heartbeatPeriodNs
        const periodMs = heartbeatNs !== undefined && Number.isFinite(heartbeatNs) && heartbeatNs > 0
          ? Math.max(1, Math.round(heartbeatNs / 1e6))
          : options.defaultHeartbeatMs ?? DEFAULT_HEARTBEAT_MS
        yield* Effect.logInfo(`binlog server: streaming to ${remote} from ${session.connectState || "the start"}, heartbeat ${periodMs} ms`)

        const loop = Effect.gen(function*() {
          while (true) {
            // Whatever is ready (at least one transaction), or nothing within a heartbeat
            // period; the next read waits while the socket is slow (send waits for drain).
            const ready = yield* cursor.next(periodMs).pipe(Effect.catchTag("SourceReadError", unreadable))
            if (ready.length === 0) {
              yield* sendEvents([dump.heartbeat()])
              continue
            }
            // One write for everything ready, up to WRITE_BYTES a write so that a slow
            // replica's backpressure bounds what is framed (large events not copied at all).
            const framed: Array<Uint8Array> = []
            let framedBytes = 0
            const sendFramed = Effect.suspend(() => {
              if (framed.length === 0) return Effect.void
              const bytes = framed.splice(0)
              framedBytes = 0
              return conn.send(bytes)
            })
            // Framed a group of events at a time: what is framed stays about WRITE_BYTES,
            // whatever the transaction's size.
            const frame = (all: ReadonlyArray<Uint8Array>) =>
              Effect.gen(function*() {
                for (const events of groupsOf(all, WRITE_BYTES)) {
                  const packets = dump.transactionPackets(events, seq)
                  if (Result.isFailure(packets)) return yield* refuse(`cannot serve a transaction: ${packets.failure.message}`)
                  if (packets.success !== undefined) {
                    seq = packets.success.nextSequenceId
                    framed.push(...packets.success.parts)
                    framedBytes += packets.success.bytes
                    if (framedBytes >= WRITE_BYTES) yield* sendFramed
                    continue
                  }
                  // Events too large for one packet: what was framed goes first, then these.
                  yield* sendFramed
                  const split = dump.transaction(events)
                  if (Result.isFailure(split)) return yield* refuse(`cannot serve a transaction: ${split.failure.message}`)
                  yield* sendEvents(split.success)
                }
              })
            for (const txn of ready) {
              if (txn.events.length > 0) yield* frame(txn.events)
              if (txn.more === undefined) continue
              // A large transaction: the next of its events once these have left.
              while (true) {
                yield* sendFramed
                const more = yield* txn.more.pipe(Effect.catchTag("SourceReadError", unreadable))
                if (more === undefined) break
                yield* frame(more)
              }
            }
            yield* sendFramed
          }
        })
        // The replica going away ends the stream at once, also while idle.
        return yield* Effect.raceFirst(loop, conn.awaitClosed)
      }))

    const handle = (accepted: Connection): Effect.Effect<void> =>
      Effect.scoped(Effect.gen(function*() {
        const conn = yield* Effect.acquireRelease(
          Effect.succeed(accepted),
          (c) => Effect.sync(() => c.close(new BinlogServerClosed({ remote: c.remote })))
        )
        yield* login(conn)
        return yield* commandLoop(conn)
      })).pipe(
        Effect.catch(logClose),
        Effect.annotateLogs({ remote: accepted.remote })
      )

    // --- listener --------------------------------------------------------------
    const listener = yield* TcpListener.listen({
      host: options.host,
      port: options.port,
      component: "binlog server",
      listenError: (cause) => new BinlogServerListenError({ host: options.host, port: options.port, cause }),
      // Constructed synchronously: it attaches the socket's error handler.
      onSocket: (socket) => handle(new Connection(socket, TcpListener.remoteOf(socket)))
    })

    return BinlogServer.of({ address: listener.address, connections: listener.connections })
  }).pipe(Effect.annotateLogs({ component: "binlog-server" }))

/** The server as a layer (closed with the layer's scope). */
export const layer = (options: BinlogServerOptions): Layer.Layer<BinlogServer, BinlogServerListenError, BinlogSource> =>
  Layer.effect(BinlogServer, make(options))
