/**
 * Node-to-node TCP transport for the Paxos log (and a small client role).
 *
 * Every node dials every peer and only *sends* on its outbound connection;
 * messages from a peer arrive on the connection that peer dialled. So each
 * pair of nodes uses two TCP connections and neither side has to arbitrate
 * which of two simultaneous dials wins.
 *
 * Wire format: frames from `domain/frame.ts` (u32 BE length + msgpack). The
 * dialer's first frame is a {@link Hello}; the listener answers
 * {@link HelloOk} or {@link HelloRejected}. After that every frame carries one
 * message, encoded and decoded with the caller's Schema.
 *
 * Input is hostile (docs/architecture.md, "Hostile input"): a bad frame closes that connection
 * with a logged, typed error and nothing else.
 */
import * as net from "node:net"
import { Cause, Context, Data, Duration, Effect, Layer, Queue, Result, Schedule, Schema, Scope } from "effect"
import {
  DEFAULT_MAX_FRAME_BYTES,
  decodePayload,
  FrameDecodeError,
  FrameDecoder,
  FrameEncodeError,
  FrameTooLarge,
  FrameTruncated,
  tryEncodeFrame
} from "../../domain/wire/frame.js"
import * as TcpListener from "../net/TcpListener.js"
import { forkScopedLogged } from "../fibers.js"
import { describeCause } from "../../domain/describe.js"
import { isWildcard } from "../../domain/wire/address.js"
import { cappedExponential } from "../schedules.js"

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

export interface PeerAddress {
  readonly nodeId: number
  readonly host: string
  readonly port: number
}

export interface TransportOptions<M> {
  readonly clusterId: string
  readonly nodeId: number
  /** Port 0 picks a free port; the bound one is in {@link Transport.address}. */
  readonly listen: { readonly host: string; readonly port: number }
  /** The other members (not self). */
  readonly peers: ReadonlyArray<PeerAddress>
  /** Encodes every sent message and decodes every received payload. */
  readonly messageSchema: Schema.Codec<M, unknown>
  /** Largest accepted payload; default 64 MiB. */
  readonly maxFrameBytes?: number
  /** Whether dialers with role "client" are accepted; default false. */
  readonly acceptClients?: boolean
  /** Bytes queued on one connection beyond which sends are dropped; default 64 MiB. */
  readonly maxOutboundBufferBytes?: number
  /** Time a dialer has to send its hello (and to receive the answer); default 5 s. */
  readonly handshakeTimeout?: Duration.Input
  /** Cheaper codec for the hottest messages; the schema still handles everything else. */
  readonly fastPath?: FastPath<M>
  /**
   * Receives every inbound message in the socket callback instead of {@link Transport.inbound}
   * (which then stays empty): saves a queue and a fiber hop per message. Must not block.
   */
  readonly onInbound?: (item: Inbound<M>) => void
}

/**
 * Hand-written codec for a subset of messages, used before the schema: the schema's checks
 * cost more than the rest of a hop for messages with many fields. `decode` must accept only
 * what the schema accepts and return what it would; anything else gives undefined and goes
 * through the schema (which reports the error). `encode` gives the wire form of a message
 * known to need no transformation, or undefined to encode with the schema.
 */
export interface FastPath<M> {
  readonly decode: (raw: unknown) => M | undefined
  readonly encode: (message: M) => unknown
}

export type Inbound<M> =
  | { readonly _tag: "Peer"; readonly from: number; readonly message: M }
  | { readonly _tag: "Client"; readonly clientId: number; readonly message: M }

export interface Transport<M> {
  /** The address actually bound. */
  readonly address: { readonly host: string; readonly port: number }
  /**
   * Queues `message` on the outbound connection to `to`. Never fails, never
   * waits: the message is dropped (debug log) when that peer is not connected
   * or its connection already holds too many unsent bytes; Paxos retransmits.
   */
  readonly send: (to: number, message: M) => Effect.Effect<void>
  /** Same semantics, on a client's inbound connection. */
  readonly replyToClient: (clientId: number, message: M) => Effect.Effect<void>
  /** Unbounded: consumers should drain it in batches with `Queue.takeAll`. */
  readonly inbound: Queue.Dequeue<Inbound<M>>
  /** Per configured peer: outbound connection established and hello accepted. */
  readonly reachable: Effect.Effect<ReadonlyMap<number, boolean>>
}

export interface ClientOptions<M> {
  readonly clusterId: string
  readonly host: string
  readonly port: number
  readonly messageSchema: Schema.Codec<M, unknown>
  readonly maxFrameBytes?: number
  readonly maxOutboundBufferBytes?: number
  readonly handshakeTimeout?: Duration.Input
  readonly fastPath?: FastPath<M>
  /** Receives messages in the socket callback instead of {@link ClientConnection.inbound} (then only ended on close). */
  readonly onMessage?: (message: M) => void
}

export interface ClientConnection<M> {
  /** Queues a message to the server; dropped (debug log) once the connection is closed. */
  readonly send: (message: M) => Effect.Effect<void>
  /** Messages from the server; ended (takers fail with `Cause.Done`) when the connection closes. */
  readonly inbound: Queue.Dequeue<M, Cause.Done>
  /** Whether the connection is still open. */
  readonly isOpen: Effect.Effect<boolean>
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

export class TransportListenError extends Data.TaggedError("TransportListenError")<{
  readonly host: string
  readonly port: number
  readonly cause: unknown
}> {
  override get message() {
    return `cannot listen on ${this.host}:${this.port}: ${describeCause(this.cause)}`
  }
}

export class TransportConnectError extends Data.TaggedError("TransportConnectError")<{
  readonly host: string
  readonly port: number
  readonly cause: unknown
}> {
  override get message() {
    return `cannot connect to ${this.host}:${this.port}: ${describeCause(this.cause)}`
  }
}

export type HandshakeFailure =
  | "Timeout" // no hello / no answer in time
  | "Malformed" // first frame is not a hello (or answer)
  | "ClusterMismatch"
  | "UnknownNode"
  | "ClientsNotAccepted"
  | "Rejected" // the listener said no (dialer side)
  | "WrongNode" // the listener is not the node configured at that address
  | "UnexpectedFrame" // a frame where the protocol has none

export class TransportHandshakeError extends Data.TaggedError("TransportHandshakeError")<{
  readonly remote: string
  readonly kind: HandshakeFailure
  readonly reason: string
}> {
  override get message() {
    return `handshake with ${this.remote} failed (${this.kind}): ${this.reason}`
  }
}

export class TransportFrameError extends Data.TaggedError("TransportFrameError")<{
  readonly remote: string
  readonly cause: FrameTooLarge | FrameTruncated | FrameDecodeError
}> {
  override get message() {
    return `bad frame from ${this.remote}: ${this.cause.message}`
  }
}

export class TransportSchemaError extends Data.TaggedError("TransportSchemaError")<{
  readonly remote: string
  readonly cause: Schema.SchemaError
}> {
  override get message() {
    return `invalid message from ${this.remote}: ${this.cause.message}`
  }
}

export class TransportSocketError extends Data.TaggedError("TransportSocketError")<{
  readonly remote: string
  readonly cause: unknown
}> {
  override get message() {
    return `socket error on ${this.remote}: ${describeCause(this.cause)}`
  }
}

/** The remote closed the connection in an orderly way. */
export class TransportClosed extends Data.TaggedError("TransportClosed")<{
  readonly remote: string
}> {
  override get message() {
    return `connection to ${this.remote} closed`
  }
}

export type TransportConnectionError =
  | TransportHandshakeError
  | TransportFrameError
  | TransportSchemaError
  | TransportSocketError
  | TransportClosed


// ---------------------------------------------------------------------------
// Handshake messages
// ---------------------------------------------------------------------------

export const Hello = Schema.TaggedStruct("Hello", {
  clusterId: Schema.String,
  nodeId: Schema.Int,
  role: Schema.Literals(["peer", "client"])
})
export type Hello = typeof Hello.Type

export const HelloOk = Schema.TaggedStruct("HelloOk", { nodeId: Schema.Int })
export const HelloRejected = Schema.TaggedStruct("HelloRejected", { reason: Schema.String })
export const HelloReply = Schema.Union([HelloOk, HelloRejected])

/** Hello frames are tiny: a pre-handshake connection may not make us buffer more. */
const HANDSHAKE_MAX_FRAME_BYTES = 64 * 1024
const DEFAULT_MAX_OUTBOUND_BUFFER_BYTES = 64 * 1024 * 1024
const DEFAULT_HANDSHAKE_TIMEOUT: Duration.Input = "5 seconds"
const CONNECT_TIMEOUT: Duration.Input = "5 seconds"
/** Grace for a HelloRejected frame to reach the dialer before the socket is destroyed. */
const REJECT_LINGER: Duration.Input = "1 second"

/** Outbound reconnect: 50 ms doubling, capped at 1 s, jittered (0.8x-1.2x). */
const reconnectSchedule = cappedExponential("50 millis", "1 second").pipe(
  Schedule.jittered
)

// ---------------------------------------------------------------------------
// Connection: one socket, framed, with coalesced writes
// ---------------------------------------------------------------------------

/** Returns an error to close the connection with, or undefined to go on. */
type Receiver = (payload: Uint8Array) => TransportConnectionError | undefined

/**
 * Callback-level wrapper of a net.Socket. Reading and writing happen in
 * socket callbacks (no fiber hop per chunk or per frame, which matters at
 * thousands of frames/s); fibers only await its lifecycle via
 * {@link awaitClosed} / {@link receiveOne}. Handlers are attached in the
 * constructor so a socket 'error' can never go unhandled (that would crash
 * the process).
 */
class Connection {
  private readonly decoder: FrameDecoder
  private receiver: Receiver | undefined = undefined
  /** Frames that arrived while no receiver was set; the socket is paused meanwhile. */
  private readonly stash: Array<Uint8Array> = []
  private pending: Array<Uint8Array> = []
  private pendingBytes = 0
  private flushScheduled = false
  private closeError: TransportConnectionError | undefined = undefined
  private readonly closeListeners = new Set<(error: TransportConnectionError) => void>()

  constructor(
    readonly socket: net.Socket,
    readonly remote: string,
    maxFrameBytes: number,
    private readonly maxBufferedBytes: number
  ) {
    this.decoder = new FrameDecoder(maxFrameBytes)
    socket.setNoDelay(true)
    // Idle connections to a host that vanished are eventually noticed.
    socket.setKeepAlive(true, 10_000)
    socket.on("data", (chunk: Buffer) => this.onData(chunk))
    socket.on("end", () => {
      const buffered = this.decoder.buffered
      this.close(
        buffered > 0
          ? new TransportFrameError({ remote, cause: new FrameTruncated({ buffered }) })
          : new TransportClosed({ remote })
      )
    })
    socket.on("error", (cause) => this.close(new TransportSocketError({ remote, cause })))
    socket.on("close", () => this.close(new TransportClosed({ remote })))
  }

  get closed(): TransportConnectionError | undefined {
    return this.closeError
  }

  setMaxFrameBytes(max: number): void {
    this.decoder.setMaxFrameBytes(max)
  }

  /** Installs (or removes) the frame handler; stashed frames are replayed first. */
  setReceiver(receiver: Receiver | undefined): void {
    this.receiver = receiver
    while (this.receiver !== undefined && this.receiver === receiver && this.stash.length > 0 && !this.closeError) {
      this.deliver(this.stash.shift()!)
    }
    if (this.receiver !== undefined && this.stash.length === 0 && this.socket.isPaused()) this.socket.resume()
  }

  /** Takes the next frame without a receiver installed (handshake). */
  takeStashed(): Uint8Array | undefined {
    return this.stash.shift()
  }

  onClose(listener: (error: TransportConnectionError) => void): () => void {
    this.closeListeners.add(listener)
    return () => this.closeListeners.delete(listener)
  }

  /**
   * Queues a frame; all frames queued before the current synchronous run ends
   * (one Effect scheduler batch) go out in one corked write. nextTick rather
   * than setImmediate: the frames leave before any further I/O is polled. Returns false (frame dropped) when closed or over the bound;
   * a single frame is always accepted on an idle connection so that frames
   * larger than the bound can still be sent.
   */
  write(frame: Uint8Array): boolean {
    if (this.closeError) return false
    const queued = this.socket.writableLength + this.pendingBytes
    if (queued > 0 && queued + frame.length > this.maxBufferedBytes) return false
    this.pending.push(frame)
    this.pendingBytes += frame.length
    if (!this.flushScheduled) {
      this.flushScheduled = true
      process.nextTick(this.flush)
    }
    return true
  }

  private readonly flush = (): void => {
    this.flushScheduled = false
    const frames = this.pending
    this.pending = []
    this.pendingBytes = 0
    if (this.closeError || frames.length === 0) return
    if (frames.length === 1) {
      this.socket.write(frames[0]!)
      return
    }
    this.socket.cork()
    for (const frame of frames) this.socket.write(frame)
    this.socket.uncork()
  }

  /** Sends pending frames and `last`, then half-closes (used to deliver a rejection). */
  end(last: Uint8Array): void {
    if (this.closeError) return
    this.flush()
    this.socket.end(last)
  }

  /** Closes with `error` (the first close reason wins). */
  close(error: TransportConnectionError): void {
    if (this.closeError) return
    this.closeError = error
    this.pending = []
    this.stash.length = 0
    this.receiver = undefined
    this.socket.destroy()
    for (const listener of this.closeListeners) listener(error)
    this.closeListeners.clear()
  }

  private onData(chunk: Uint8Array): void {
    if (this.closeError) return
    const { error, frames } = this.decoder.push(chunk)
    for (const frame of frames) {
      if (this.closeError) return
      this.deliver(frame)
    }
    if (error !== undefined) this.close(new TransportFrameError({ remote: this.remote, cause: error }))
  }

  private deliver(frame: Uint8Array): void {
    const receiver = this.receiver
    if (receiver === undefined) {
      // Nobody is reading yet (handshake in progress): hold it and stop
      // reading from the kernel so the stash stays small.
      this.stash.push(frame)
      if (!this.socket.isPaused()) this.socket.pause()
      return
    }
    const error = receiver(frame)
    if (error !== undefined) this.close(error)
  }
}


/** Waits until the connection closes; fails with the reason (TransportClosed for an orderly close). */
const awaitClosed = (conn: Connection): Effect.Effect<never, TransportConnectionError> =>
  Effect.callback<never, TransportConnectionError>((resume) => {
    const closed = conn.closed
    if (closed !== undefined) return resume(Effect.fail(closed))
    const remove = conn.onClose((error) => resume(Effect.fail(error)))
    return Effect.sync(remove)
  })

/** The next frame on a connection that has no receiver installed. */
const receiveOne = (conn: Connection): Effect.Effect<Uint8Array, TransportConnectionError> =>
  Effect.callback<Uint8Array, TransportConnectionError>((resume) => {
    const stashed = conn.takeStashed()
    if (stashed !== undefined) return resume(Effect.succeed(stashed))
    const closed = conn.closed
    if (closed !== undefined) return resume(Effect.fail(closed))
    const removeClose = conn.onClose((error) => resume(Effect.fail(error)))
    conn.setReceiver((payload) => {
      // One frame only: later frames wait in the stash for the next receiver.
      conn.setReceiver(undefined)
      removeClose()
      resume(Effect.succeed(payload))
      return undefined
    })
    return Effect.sync(() => {
      removeClose()
      conn.setReceiver(undefined)
    })
  })

/** Wraps a socket in a Connection released (destroyed) with the scope. */
const acquireConnection = (conn: Connection): Effect.Effect<Connection, never, Scope.Scope> =>
  Effect.acquireRelease(Effect.succeed(conn), (c) =>
    Effect.sync(() => c.close(new TransportClosed({ remote: c.remote }))))


/** Dials host:port; the connection is destroyed when the scope closes. */
const dial = (
  host: string,
  port: number,
  maxBufferedBytes: number,
  localAddress?: string
): Effect.Effect<Connection, TransportConnectError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.callback<Connection, TransportConnectError>((resume) => {
      const socket = net.connect({ host, port, ...(localAddress !== undefined ? { localAddress } : {}) })
      const onError = (cause: Error) => {
        socket.destroy()
        resume(Effect.fail(new TransportConnectError({ host, port, cause })))
      }
      socket.once("error", onError)
      socket.once("connect", () => {
        // The Connection attaches its own error handler before ours goes.
        const conn = new Connection(socket, `${host}:${port}`, HANDSHAKE_MAX_FRAME_BYTES, maxBufferedBytes)
        socket.off("error", onError)
        resume(Effect.succeed(conn))
      })
      return Effect.sync(() => socket.destroy())
    }).pipe(
      Effect.timeoutOrElse({
        duration: CONNECT_TIMEOUT,
        orElse: () => Effect.fail(new TransportConnectError({ host, port, cause: "connect timed out" }))
      })
    ),
    (conn) => Effect.sync(() => conn.close(new TransportClosed({ remote: conn.remote }))),
    // Interruptible so that closing the scope aborts a dial in progress.
    { interruptible: true }
  )

const handshakeError = (remote: string, kind: HandshakeFailure, reason: string) =>
  new TransportHandshakeError({ remote, kind, reason })

const withTimeout = <A, E>(
  effect: Effect.Effect<A, E>,
  duration: Duration.Input,
  onTimeout: () => E
): Effect.Effect<A, E> => Effect.timeoutOrElse(effect, { duration, orElse: () => Effect.fail(onTimeout()) })

/** Decodes a frame against a Schema; both failure kinds are connection errors. */
const decodeFrameWith = <A>(decode: (u: unknown) => Result.Result<A, Schema.SchemaError>, remote: string) =>
(payload: Uint8Array): Result.Result<A, TransportFrameError | TransportSchemaError> => {
  const raw = decodePayload(payload)
  if (Result.isFailure(raw)) return Result.fail(new TransportFrameError({ remote, cause: raw.failure }))
  const decoded = decode(raw.success)
  if (Result.isFailure(decoded)) return Result.fail(new TransportSchemaError({ remote, cause: decoded.failure }))
  return Result.succeed(decoded.success)
}

const decodeHelloFrame = (remote: string) => decodeFrameWith(Schema.decodeUnknownResult(Hello), remote)
const decodeReplyFrame = (remote: string) => decodeFrameWith(Schema.decodeUnknownResult(HelloReply), remote)

/**
 * Encodes a message (Schema, then msgpack frame), ready for any connection. The last frame
 * is kept: a broadcast sends the same (immutable) message object to every peer in a row,
 * and frames are never mutated once built, so one encoding serves them all.
 */
const makeEncoder = <M>(schema: Schema.Codec<M, unknown>, maxFrameBytes: number, fastPath?: FastPath<M>) => {
  const encode = Schema.encodeResult(schema)
  let lastMessage: M | undefined = undefined
  let lastFrame: Result.Result<Uint8Array, FrameEncodeError | Schema.SchemaError> | undefined = undefined
  return (message: M): Result.Result<Uint8Array, FrameEncodeError | Schema.SchemaError> => {
    if (message === lastMessage && lastFrame !== undefined) return lastFrame
    lastFrame = encodeUncached(message)
    lastMessage = message
    return lastFrame
  }
  function encodeUncached(message: M): Result.Result<Uint8Array, FrameEncodeError | Schema.SchemaError> {
    let wire = fastPath?.encode(message)
    if (wire === undefined) {
      const encoded = encode(message)
      if (Result.isFailure(encoded)) return Result.fail(encoded.failure)
      wire = encoded.success
    }
    const frame = tryEncodeFrame(wire)
    if (Result.isSuccess(frame) && frame.success.length - 4 > maxFrameBytes) {
      // The receiver would close the connection over it: drop it here instead.
      return Result.fail(
        new FrameEncodeError({ cause: `message of ${frame.success.length - 4} bytes exceeds maxFrameBytes` })
      )
    }
    return frame
  }
}

/** Receiver that decodes each frame into a message and hands it on. */
const messageReceiver = <M>(
  schema: Schema.Codec<M, unknown>,
  remote: string,
  emit: (message: M) => void,
  fastPath?: FastPath<M>
): Receiver => {
  const decodeSchema = Schema.decodeUnknownResult(schema)
  const fastDecode = fastPath?.decode
  const decode = decodeFrameWith(
    fastDecode === undefined ? decodeSchema : (u) => {
      const fast = fastDecode(u)
      return fast !== undefined ? Result.succeed(fast) : decodeSchema(u)
    },
    remote
  )
  return (payload) => {
    const result = decode(payload)
    if (Result.isFailure(result)) return result.failure
    emit(result.success)
    return undefined
  }
}

/** Dialer side: send hello, wait for HelloOk; a rejection is a failed attempt. */
const dialerHandshake = (
  conn: Connection,
  hello: Hello,
  maxFrameBytes: number,
  timeout: Duration.Input,
  expectedNodeId: number | undefined
): Effect.Effect<void, TransportConnectionError> =>
  Effect.gen(function*() {
    const remote = conn.remote
    conn.write(encodeControl(hello))
    const payload = yield* withTimeout(
      receiveOne(conn),
      timeout,
      () => handshakeError(remote, "Timeout", "no answer to hello")
    )
    const reply = decodeReplyFrame(remote)(payload)
    if (Result.isFailure(reply)) {
      return yield* Effect.fail(handshakeError(remote, "Malformed", reply.failure.message))
    }
    if (reply.success._tag === "HelloRejected") {
      return yield* Effect.fail(handshakeError(remote, "Rejected", reply.success.reason))
    }
    if (expectedNodeId !== undefined && reply.success.nodeId !== expectedNodeId) {
      // A misconfigured address would otherwise route node X's traffic to node Y.
      return yield* Effect.fail(
        handshakeError(remote, "WrongNode", `expected node ${expectedNodeId}, answered by node ${reply.success.nodeId}`)
      )
    }
    conn.setMaxFrameBytes(maxFrameBytes)
  })

const encodeControl = (
  message: Hello | typeof HelloOk.Type | typeof HelloRejected.Type
): Uint8Array => {
  const frame = tryEncodeFrame(message)
  // Plain strings and ints always encode.
  if (Result.isFailure(frame)) throw frame.failure
  return frame.success
}

/** Answers HelloRejected and gives the frame a moment to leave before the socket is destroyed. */
const reject = (conn: Connection, refusal: TransportHandshakeError): Effect.Effect<void> =>
  Effect.suspend(() => {
    conn.end(encodeControl({ _tag: "HelloRejected", reason: refusal.reason }))
    return Effect.asVoid(Effect.exit(withTimeout(awaitClosed(conn), REJECT_LINGER, () => refusal)))
  })

/** Orderly closes are routine; everything else is worth a warning. */
const logClose = (what: string, error: TransportConnectionError) =>
  error._tag === "TransportClosed"
    ? Effect.logDebug(`transport: ${what} closed`, error)
    : Effect.logWarning(`transport: ${what} closed: ${error.message}`, error)

// ---------------------------------------------------------------------------
// Transport
// ---------------------------------------------------------------------------

interface Link {
  readonly peer: PeerAddress
  conn: Connection | undefined
}

export const make = <M>(
  options: TransportOptions<M>
): Effect.Effect<Transport<M>, TransportListenError, Scope.Scope> =>
  Effect.gen(function*() {
    const maxFrameBytes = options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES
    const maxBuffered = options.maxOutboundBufferBytes ?? DEFAULT_MAX_OUTBOUND_BUFFER_BYTES
    const handshakeTimeout = options.handshakeTimeout ?? DEFAULT_HANDSHAKE_TIMEOUT
    const acceptClients = options.acceptClients ?? false
    const peerIds = new Set(options.peers.map((p) => p.nodeId))
    const encode = makeEncoder(options.messageSchema, maxFrameBytes, options.fastPath)

    const inbound = yield* Queue.unbounded<Inbound<M>>()
    const deliver = options.onInbound ?? ((item: Inbound<M>) => {
      Queue.offerUnsafe(inbound, item)
    })
    const links = new Map<number, Link>(options.peers.map((peer) => [peer.nodeId, { peer, conn: undefined }]))
    const clients = new Map<number, Connection>()
    let nextClientId = 1

    // --- inbound connections -------------------------------------------------
    // One fiber per accepted connection: handshake, then frames flow from the
    // socket callbacks into `inbound` until the connection closes.
    const handleInbound = (accepted: Connection): Effect.Effect<void> =>
      Effect.scoped(
        Effect.gen(function*() {
          const conn = yield* acquireConnection(accepted)
          const remote = conn.remote
          const payload = yield* withTimeout(
            receiveOne(conn),
            handshakeTimeout,
            () => handshakeError(remote, "Timeout", "no hello received in time")
          )
          const decoded = decodeHelloFrame(remote)(payload)
          if (Result.isFailure(decoded)) {
            const malformed = handshakeError(remote, "Malformed", decoded.failure.message)
            // Well-formed msgpack that is not a valid hello (e.g. a newer
            // version) gets a reason; undecodable bytes are not one of ours.
            if (decoded.failure._tag === "TransportSchemaError") yield* reject(conn, malformed)
            return yield* Effect.fail(malformed)
          }
          const hello = decoded.success
          const refusal: TransportHandshakeError | undefined = hello.clusterId !== options.clusterId
            ? handshakeError(remote, "ClusterMismatch", `cluster id ${JSON.stringify(hello.clusterId.slice(0, 100))} is not ours`)
            : hello.role === "peer" && !peerIds.has(hello.nodeId)
            ? handshakeError(remote, "UnknownNode", `node ${hello.nodeId} is not a configured peer`)
            : hello.role === "client" && !acceptClients
            ? handshakeError(remote, "ClientsNotAccepted", "this listener does not accept clients")
            : undefined
          if (refusal !== undefined) {
            yield* reject(conn, refusal)
            return yield* Effect.fail(refusal)
          }
          conn.setMaxFrameBytes(maxFrameBytes)
          conn.write(encodeControl({ _tag: "HelloOk", nodeId: options.nodeId }))
          if (hello.role === "peer") {
            const from = hello.nodeId
            conn.setReceiver(
              messageReceiver(options.messageSchema, remote, (message) => {
                deliver({ _tag: "Peer", from, message })
              }, options.fastPath)
            )
            yield* Effect.logDebug(`transport: inbound link from node ${from} established`)
            return yield* awaitClosed(conn).pipe(Effect.annotateLogs({ from }))
          }
          const clientId = nextClientId++
          clients.set(clientId, conn)
          yield* Effect.addFinalizer(() => Effect.sync(() => clients.delete(clientId)))
          conn.setReceiver(
            messageReceiver(options.messageSchema, remote, (message) => {
              deliver({ _tag: "Client", clientId, message })
            }, options.fastPath)
          )
          return yield* awaitClosed(conn)
        })
      ).pipe(Effect.catch((error) => logClose(`inbound connection from ${accepted.remote}`, error)))

    // --- listener --------------------------------------------------------
    const listener = yield* TcpListener.listen({
      host: options.listen.host,
      port: options.listen.port,
      component: "transport",
      listenError: (cause) => new TransportListenError({ host: options.listen.host, port: options.listen.port, cause }),
      // Construct synchronously: it attaches the socket's error handler.
      onSocket: (socket) => handleInbound(new Connection(socket, TcpListener.remoteOf(socket), HANDSHAKE_MAX_FRAME_BYTES, maxBuffered))
    })
    const address = listener.address

    // --- outbound links ----------------------------------------------------
    const hello: Hello = { _tag: "Hello", clusterId: options.clusterId, nodeId: options.nodeId, role: "peer" }
    const sourceAddress = isWildcard(options.listen.host) ? undefined : options.listen.host

    const runLink = (link: Link): Effect.Effect<never> => {
      const { host, port, nodeId } = link.peer
      // One connection's life: dial, handshake, publish, wait for it to close.
      // Succeeds (with the close reason) only once it had been established.
      const session = Effect.scoped(
        Effect.gen(function*() {
          // From our own listen address: peers (and partition rules) see which node this is.
          const conn = yield* dial(host, port, maxBuffered, sourceAddress)
          yield* dialerHandshake(conn, hello, maxFrameBytes, handshakeTimeout, nodeId)
          // The peer never writes on our outbound connection after HelloOk.
          conn.setReceiver(() => handshakeError(conn.remote, "UnexpectedFrame", "frame on an outbound peer link"))
          link.conn = conn
          yield* Effect.addFinalizer(() =>
            Effect.sync(() => {
              if (link.conn === conn) link.conn = undefined
            })
          )
          yield* Effect.logDebug(`transport: outbound link to node ${nodeId} established`)
          return yield* Effect.flip(awaitClosed(conn))
        })
      )
      return session.pipe(
        Effect.tapError((error) =>
          error._tag === "TransportHandshakeError" && (error.kind === "Rejected" || error.kind === "WrongNode")
            ? Effect.logWarning(`transport: handshake with node ${nodeId} failed: ${error.reason}`, error)
            : Effect.logDebug(`transport: dial to node ${nodeId} failed: ${error.message}`, error)
        ),
        // Fresh backoff after every established session (retry restarts the schedule).
        Effect.retry(reconnectSchedule),
        Effect.flatMap((closed) => logClose(`outbound link to node ${nodeId}`, closed)),
        // The schedule never gives up; this only satisfies the type.
        Effect.catch((error) => Effect.logWarning(`transport: outbound link to node ${nodeId} gave up`, error)),
        Effect.forever,
        Effect.annotateLogs({ peer: nodeId })
      )
    }

    for (const link of links.values()) {
      yield* runLink(link).pipe(forkScopedLogged(`transport: the link to node ${link.peer.nodeId}`))
    }

    // --- API ---------------------------------------------------------------
    const sendOn = (conn: Connection | undefined, message: M, target: string): Effect.Effect<void> => {
      if (conn === undefined) return Effect.logDebug(`transport: ${target} not connected, message dropped`)
      const frame = encode(message)
      if (Result.isFailure(frame)) {
        return Effect.logWarning(`transport: cannot encode message for ${target}, dropped`, frame.failure)
      }
      if (!conn.write(frame.success)) {
        return Effect.logDebug(`transport: ${target} outbound buffer full or closed, message dropped`)
      }
      return Effect.void
    }

    const send = (to: number, message: M): Effect.Effect<void> =>
      Effect.suspend(() => sendOn(links.get(to)?.conn, message, `node ${to}`))

    const replyToClient = (clientId: number, message: M): Effect.Effect<void> =>
      Effect.suspend(() => sendOn(clients.get(clientId), message, `client ${clientId}`))

    const reachable = Effect.sync(
      (): ReadonlyMap<number, boolean> => new Map([...links].map(([id, link]) => [id, link.conn !== undefined]))
    )

    return { address, send, replyToClient, inbound, reachable } satisfies Transport<M>
  }).pipe(Effect.annotateLogs({ component: "transport", nodeId: options.nodeId }))

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

/** Dials a transport listener in the client role; the connection closes with the scope. */
export const connectClient = <M>(
  options: ClientOptions<M>
): Effect.Effect<ClientConnection<M>, TransportConnectError, Scope.Scope> =>
  Effect.gen(function*() {
    const { host, port } = options
    const maxFrameBytes = options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES
    const encode = makeEncoder(options.messageSchema, maxFrameBytes, options.fastPath)
    const conn = yield* dial(host, port, options.maxOutboundBufferBytes ?? DEFAULT_MAX_OUTBOUND_BUFFER_BYTES)
    yield* dialerHandshake(
      conn,
      { _tag: "Hello", clusterId: options.clusterId, nodeId: 0, role: "client" },
      maxFrameBytes,
      options.handshakeTimeout ?? DEFAULT_HANDSHAKE_TIMEOUT,
      undefined
    ).pipe(
      // Close at once rather than when the caller's scope ends.
      Effect.tapError((error) => Effect.sync(() => conn.close(error))),
      Effect.mapError((cause) => new TransportConnectError({ host, port, cause }))
    )

    const inbound = yield* Queue.unbounded<M, Cause.Done>()
    const onMessage = options.onMessage ?? ((message: M) => {
      Queue.offerUnsafe(inbound, message)
    })
    conn.setReceiver(messageReceiver(options.messageSchema, conn.remote, onMessage, options.fastPath))
    yield* awaitClosed(conn).pipe(
      Effect.catch((error) => logClose(`client connection to ${conn.remote}`, error)),
      Effect.ensuring(Queue.end(inbound)),
      Effect.forkScoped
    )

    const send = (message: M): Effect.Effect<void> =>
      Effect.suspend(() => {
        const frame = encode(message)
        if (Result.isFailure(frame)) {
          return Effect.logWarning("transport: cannot encode client message, dropped", frame.failure)
        }
        return conn.write(frame.success)
          ? Effect.void
          : Effect.logDebug("transport: client connection closed or full, message dropped")
      })

    return {
      send,
      inbound,
      isOpen: Effect.sync(() => conn.closed === undefined)
    } satisfies ClientConnection<M>
  }).pipe(Effect.annotateLogs({ component: "transport-client" }))

// ---------------------------------------------------------------------------
// The peer network as a service: TCP in a node, in memory in tests
// ---------------------------------------------------------------------------

export interface PeerNetworkShape {
  /** Opens this node's endpoint: listens for peers (and clients) and dials every peer. */
  readonly open: <M>(options: TransportOptions<M>) => Effect.Effect<Transport<M>, TransportListenError, Scope.Scope>
}

/** What PaxosLog sends and receives on; `tcpLayer` in a node, `MemoryNetwork` in tests. */
export class PeerNetwork extends Context.Service<PeerNetwork, PeerNetworkShape>()("phxmaria/PeerNetwork") {}

export const tcpLayer: Layer.Layer<PeerNetwork> = Layer.succeed(PeerNetwork, PeerNetwork.of({ open: make }))
