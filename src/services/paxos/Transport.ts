/**
 * Node-to-node TCP transport for the Paxos log (and a small client role).
 *
 * Every node dials every peer and only *sends* on its outbound connection;
 * messages from a peer arrive on the connection that peer dialled. So each
 * pair of nodes uses two TCP connections and neither side has to arbitrate
 * which of two simultaneous dials wins.
 *
 * Wire format: frames from `domain/frame.ts` (u32 BE length + msgpack), read and
 * written by FramedConnection.ts. The dialer's first frame is a {@link Hello};
 * the listener answers {@link HelloOk} or {@link HelloRejected} (Handshake.ts).
 * After that every frame carries one message, encoded and decoded with the
 * caller's Schema.
 *
 * Input is hostile (docs/architecture.md, "Hostile input"): a bad frame closes that connection
 * with a logged, typed error and nothing else.
 */
import * as net from "node:net"
import * as tls from "node:tls"
import * as PeerTls from "../tls/PeerTls.js"
import { Cause, Context, Duration, Effect, Fiber, Layer, Queue, Result, Schedule, Schema, Scope } from "effect"
import { DEFAULT_MAX_FRAME_BYTES, FRAME_HEADER_BYTES, FrameEncodeError, tryEncodeFrameParts } from "../../domain/wire/frame.js"
import type { Scattered } from "../../domain/wire/scatter.js"
import * as TcpListener from "../net/TcpListener.js"
import * as HostAddresses from "../net/HostAddresses.js"
import { forkScopedLogged } from "../fibers.js"
import { isWildcard } from "../../domain/wire/address.js"
import { cappedExponential } from "../schedules.js"
import { acquireConnection, awaitClosed, Connection, decodeFrameWith, type Receiver } from "./FramedConnection.js"
import {
  dialerHandshake,
  HANDSHAKE_MAX_FRAME_BYTES,
  type Hello,
  handshakeError,
  listenerHandshake
} from "./Handshake.js"
import {
  TransportClosed,
  TransportConnectError,
  type TransportConnectionError,
  TransportListenError
} from "./TransportErrors.js"

// Part of this module's API (and of the library's `Transport` namespace).
export {
  type HandshakeFailure,
  TransportClosed,
  TransportConnectError,
  type TransportConnectionError,
  TransportFrameError,
  TransportHandshakeError,
  TransportListenError,
  TransportSchemaError,
  TransportSocketError
} from "./TransportErrors.js"
export { Hello, HelloOk, HelloRejected, HelloReply } from "./Handshake.js"

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
  /** While true, peers of the cluster not configured are accepted too (a node joining knows no members yet). */
  readonly acceptUnknownPeers?: () => boolean
  /** Whether dialers with role "client" are accepted; default false. */
  readonly acceptClients?: boolean
  /** Bytes queued on one connection beyond which sends are dropped; default 64 MiB. */
  readonly maxOutboundBufferBytes?: number
  /** Time a dialer has to send its hello (and to receive the answer); default 5 s. */
  readonly handshakeTimeout?: Duration.Input
  /** Cheaper codec for the hottest messages; the schema still handles everything else. */
  readonly fastPath?: FastPath<M>
  /**
   * Mutual TLS with the cluster's CA: the listener drops dialers without a certificate in
   * the TLS handshake, and a peer's hello must claim the node its certificate names.
   */
  readonly tls?: PeerTls.PeerTls | undefined
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
  /**
   * Replaces the peers (a membership change): new ones are dialled and accepted, links to
   * those gone are closed and their hellos refused from now on.
   */
  readonly setPeers: (peers: ReadonlyArray<PeerAddress>) => Effect.Effect<void>
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
  /** A certificate of the cluster's CA, for a listener that requires mutual TLS. */
  readonly tls?: PeerTls.PeerTls | undefined
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
// Dialing, message encoding and decoding, close logs
// ---------------------------------------------------------------------------

const DEFAULT_MAX_OUTBOUND_BUFFER_BYTES = 64 * 1024 * 1024
const DEFAULT_HANDSHAKE_TIMEOUT: Duration.Input = "5 seconds"
const CONNECT_TIMEOUT: Duration.Input = "5 seconds"

/** Outbound reconnect: 50 ms doubling, capped at 1 s, jittered (0.8x-1.2x). */
const reconnectSchedule = cappedExponential("50 millis", "1 second").pipe(
  Schedule.jittered
)

/** A dial that failed in the name lookup (getaddrinfo), not in connecting. */
const isUnresolved = (cause: unknown): boolean => {
  const code = (cause as NodeJS.ErrnoException | undefined)?.code
  return code === "ENOTFOUND" || code === "EAI_AGAIN" || code === "EAI_FAIL" || code === "EAI_NODATA"
}

/** Dials host:port; the connection is destroyed when the scope closes. */
const dial = (
  host: string,
  port: number,
  maxBufferedBytes: number,
  localAddress?: string,
  secure?: tls.ConnectionOptions
): Effect.Effect<Connection, TransportConnectError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.callback<Connection, TransportConnectError>((resume) => {
      // A member's name is looked up once per TTL, not per redial (HostAddresses.dialLookup).
      const at = { host, port, lookup: HostAddresses.dialLookup, ...(localAddress !== undefined ? { localAddress } : {}) }
      const socket: net.Socket = secure === undefined ? net.connect(at) : tls.connect({ ...at, ...secure })
      const onError = (cause: Error) => {
        socket.destroy()
        resume(Effect.fail(new TransportConnectError({ host, port, cause })))
      }
      socket.once("error", onError)
      socket.once(secure === undefined ? "connect" : "secureConnect", () => {
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

/**
 * Encodes a message (Schema, then msgpack frame), ready for any connection. The last frame
 * is kept: a broadcast sends the same (immutable) message object to every peer in a row,
 * and frames are never mutated once built, so one encoding serves them all.
 */
const makeEncoder = <M>(schema: Schema.Codec<M, unknown>, maxFrameBytes: number, fastPath?: FastPath<M>) => {
  const encode = Schema.encodeResult(schema)
  let lastMessage: M | undefined = undefined
  let lastFrame: Result.Result<Scattered, FrameEncodeError | Schema.SchemaError> | undefined = undefined
  return (message: M): Result.Result<Scattered, FrameEncodeError | Schema.SchemaError> => {
    if (message === lastMessage && lastFrame !== undefined) return lastFrame
    lastFrame = encodeUncached(message)
    lastMessage = message
    return lastFrame
  }
  function encodeUncached(message: M): Result.Result<Scattered, FrameEncodeError | Schema.SchemaError> {
    let wire = fastPath?.encode(message)
    if (wire === undefined) {
      const encoded = encode(message)
      if (Result.isFailure(encoded)) return Result.fail(encoded.failure)
      wire = encoded.success
    }
    // A transaction's bytes are not copied into the frame: they go out as ranges of their own.
    const frame = tryEncodeFrameParts(wire)
    const payloadBytes = Result.isSuccess(frame) ? frame.success.length - FRAME_HEADER_BYTES : 0
    if (payloadBytes > maxFrameBytes) {
      // The receiver would close the connection over it: drop it here instead.
      return Result.fail(new FrameEncodeError({ cause: `message of ${payloadBytes} bytes exceeds maxFrameBytes` }))
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
  /** The fiber running it (dial, reconnect): interrupted when the peer leaves. */
  fiber?: Fiber.Fiber<unknown, unknown>
}

export const make = <M>(
  options: TransportOptions<M>
): Effect.Effect<Transport<M>, TransportListenError, Scope.Scope> =>
  Effect.gen(function*() {
    const maxFrameBytes = options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES
    const maxBuffered = options.maxOutboundBufferBytes ?? DEFAULT_MAX_OUTBOUND_BUFFER_BYTES
    const handshakeTimeout = options.handshakeTimeout ?? DEFAULT_HANDSHAKE_TIMEOUT
    const acceptClients = options.acceptClients ?? false
    const peerIds = new Set(options.peers.filter((p) => p.nodeId !== options.nodeId).map((p) => p.nodeId))
    const encode = makeEncoder(options.messageSchema, maxFrameBytes, options.fastPath)

    const inbound = yield* Queue.unbounded<Inbound<M>>()
    const deliver = options.onInbound ?? ((item: Inbound<M>) => {
      Queue.offerUnsafe(inbound, item)
    })
    const links = new Map<number, Link>(options.peers.filter((p) => p.nodeId !== options.nodeId).map((peer) => [peer.nodeId, { peer, conn: undefined }]))
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
          const hello = yield* listenerHandshake(conn, {
            clusterId: options.clusterId,
            nodeId: options.nodeId,
            peerIds: options.acceptUnknownPeers?.() === true ? { has: (id: number) => id !== options.nodeId } as ReadonlySet<number> : peerIds,
            acceptClients,
            maxFrameBytes,
            timeout: handshakeTimeout,
            ...(options.tls !== undefined ? { certifiedNodeId: PeerTls.peerNodeId(conn.socket as tls.TLSSocket) ?? 0 } : {})
          })
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
    // A host name is resolved once: the node listens on, and dials from, its first address.
    const listenHost = yield* HostAddresses.listenAddress(options.listen.host).pipe(
      Effect.mapError((cause) => new TransportListenError({ host: options.listen.host, port: options.listen.port, cause }))
    )
    const listener = yield* TcpListener.listen({
      host: listenHost,
      port: options.listen.port,
      component: "transport",
      listenError: (cause) => new TransportListenError({ host: options.listen.host, port: options.listen.port, cause }),
      // Construct synchronously: it attaches the socket's error handler.
      onSocket: (socket) => handleInbound(new Connection(socket, TcpListener.remoteOf(socket), HANDSHAKE_MAX_FRAME_BYTES, maxBuffered)),
      tls: options.tls === undefined ? undefined : PeerTls.serverOptions(options.tls)
    })
    const address = { host: options.listen.host, port: listener.address.port }

    // --- outbound links ----------------------------------------------------
    const hello: Hello = { _tag: "Hello", clusterId: options.clusterId, nodeId: options.nodeId, role: "peer" }
    const sourceAddress = isWildcard(listenHost) ? undefined : listenHost

    const runLink = (link: Link): Effect.Effect<never> => {
      const { host, port, nodeId } = link.peer
      // A peer's name that does not resolve (DNS not up yet, a typo) is said once, then retried quietly.
      let unresolvedSaid = false
      // One connection's life: dial, handshake, publish, wait for it to close.
      // Succeeds (with the close reason) only once it had been established.
      const session = Effect.scoped(
        Effect.gen(function*() {
          // From our own listen address: peers (and partition rules) see which node this is.
          const conn = yield* dial(host, port, maxBuffered, sourceAddress, options.tls === undefined ? undefined : PeerTls.clientOptions(options.tls, nodeId))
          yield* dialerHandshake(conn, hello, maxFrameBytes, handshakeTimeout, nodeId)
          // The peer never writes on our outbound connection after HelloOk.
          conn.setReceiver(() => handshakeError(conn.remote, "UnexpectedFrame", "frame on an outbound peer link"))
          link.conn = conn
          yield* Effect.addFinalizer(() =>
            Effect.sync(() => {
              if (link.conn === conn) link.conn = undefined
            })
          )
          unresolvedSaid = false
          yield* Effect.logDebug(`transport: outbound link to node ${nodeId} established`)
          return yield* Effect.flip(awaitClosed(conn))
        })
      )
      return session.pipe(
        Effect.tapError((error) => {
          if (error._tag === "TransportHandshakeError" && (error.kind === "Rejected" || error.kind === "WrongNode")) {
            return Effect.logWarning(`transport: handshake with node ${nodeId} failed: ${error.reason}`, error)
          }
          if (error._tag === "TransportConnectError" && isUnresolved(error.cause) && !unresolvedSaid) {
            unresolvedSaid = true
            return Effect.logWarning(`transport: node ${nodeId}'s host ${host} does not resolve (${(error.cause as NodeJS.ErrnoException).code}); retrying`)
          }
          return Effect.logDebug(`transport: dial to node ${nodeId} failed: ${error.message}`, error)
        }),
        // Fresh backoff after every established session (retry restarts the schedule).
        Effect.retry(reconnectSchedule),
        Effect.flatMap((closed) => logClose(`outbound link to node ${nodeId}`, closed)),
        // The schedule never gives up; this only satisfies the type.
        Effect.catch((error) => Effect.logWarning(`transport: outbound link to node ${nodeId} gave up`, error)),
        Effect.forever,
        Effect.annotateLogs({ peer: nodeId })
      )
    }

    const transportScope = yield* Effect.scope
    const startLink = (link: Link) =>
      Effect.map(runLink(link).pipe(forkScopedLogged(`transport: the link to node ${link.peer.nodeId}`), Scope.provide(transportScope)), (fiber) => {
        link.fiber = fiber
      })
    for (const link of links.values()) yield* startLink(link)

    const setPeers = (peers: ReadonlyArray<PeerAddress>) =>
      Effect.gen(function*() {
        const wanted = new Map(peers.filter((p) => p.nodeId !== options.nodeId).map((p) => [p.nodeId, p]))
        for (const [id, link] of [...links]) {
          const next = wanted.get(id)
          if (next !== undefined && next.host === link.peer.host && next.port === link.peer.port) continue
          // Gone, or moved to another address: closed (and dialled anew below if moved).
          links.delete(id)
          peerIds.delete(id)
          if (link.fiber !== undefined) yield* Fiber.interrupt(link.fiber)
          link.conn?.close(new TransportClosed({ remote: `${link.peer.host}:${link.peer.port}` }))
        }
        for (const [id, peer] of wanted) {
          peerIds.add(id)
          if (links.has(id)) continue
          const link: Link = { peer, conn: undefined }
          links.set(id, link)
          yield* startLink(link)
        }
      })

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

    return { address, send, replyToClient, inbound, reachable, setPeers } satisfies Transport<M>
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
    const conn = yield* dial(host, port, options.maxOutboundBufferBytes ?? DEFAULT_MAX_OUTBOUND_BUFFER_BYTES, undefined,
      options.tls === undefined ? undefined : PeerTls.clientOptions(options.tls, undefined))
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
