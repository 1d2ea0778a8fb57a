/**
 * The hello exchange that opens every transport connection: the dialer sends a
 * {@link Hello}, the listener answers {@link HelloOk} or {@link HelloRejected}.
 */
import { type Duration, Effect, Result, Schema } from "effect"
import { tryEncodeFrame } from "../../domain/wire/frame.js"
import { awaitClosed, type Connection, decodeFrameWith, receiveOne } from "./FramedConnection.js"
import { type HandshakeFailure, type TransportConnectionError, TransportHandshakeError } from "./TransportErrors.js"

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
export const HANDSHAKE_MAX_FRAME_BYTES = 64 * 1024
/** Grace for a HelloRejected frame to reach the dialer before the socket is destroyed. */
const REJECT_LINGER: Duration.Input = "1 second"

export const handshakeError = (remote: string, kind: HandshakeFailure, reason: string) =>
  new TransportHandshakeError({ remote, kind, reason })

const withTimeout = <A, E>(
  effect: Effect.Effect<A, E>,
  duration: Duration.Input,
  onTimeout: () => E
): Effect.Effect<A, E> => Effect.timeoutOrElse(effect, { duration, orElse: () => Effect.fail(onTimeout()) })

const decodeHelloFrame = (remote: string) => decodeFrameWith(Schema.decodeUnknownResult(Hello), remote)
const decodeReplyFrame = (remote: string) => decodeFrameWith(Schema.decodeUnknownResult(HelloReply), remote)

// ---------------------------------------------------------------------------
// Handshake steps
// ---------------------------------------------------------------------------

/** Dialer side: send hello, wait for HelloOk; a rejection is a failed attempt. */
export const dialerHandshake = (
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

/** What a listener accepts: dialers of its cluster that are configured peers, or clients when allowed. */
export interface ListenerHandshakeOptions {
  readonly clusterId: string
  /** Ours, sent in HelloOk. */
  readonly nodeId: number
  readonly peerIds: ReadonlySet<number>
  readonly acceptClients: boolean
  /** The frame bound once the hello is accepted. */
  readonly maxFrameBytes: number
  readonly timeout: Duration.Input
  /**
   * With mutual TLS: the node id the dialer's certificate names (0: not a node
   * certificate). A peer's hello must claim that node: a certificate is not a pass for others.
   */
  readonly certifiedNodeId?: number | undefined
}

/** Listener side: wait for the hello, refuse it (HelloRejected) or answer HelloOk; gives the accepted hello. */
export const listenerHandshake = (
  conn: Connection,
  options: ListenerHandshakeOptions
): Effect.Effect<Hello, TransportConnectionError> =>
  Effect.gen(function*() {
    const { peerIds, acceptClients, maxFrameBytes } = options
    const remote = conn.remote
    const payload = yield* withTimeout(
      receiveOne(conn),
      options.timeout,
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
      : hello.role === "peer" && options.certifiedNodeId !== undefined && options.certifiedNodeId !== hello.nodeId
      ? handshakeError(remote, "NotCertified", `claims node ${hello.nodeId}, but its certificate ${options.certifiedNodeId === 0 ? "names no node" : `is node ${options.certifiedNodeId}'s`}`)
      : hello.role === "client" && !acceptClients
      ? handshakeError(remote, "ClientsNotAccepted", "this listener does not accept clients")
      : undefined
    if (refusal !== undefined) {
      yield* reject(conn, refusal)
      return yield* Effect.fail(refusal)
    }
    conn.setMaxFrameBytes(maxFrameBytes)
    conn.write(encodeControl({ _tag: "HelloOk", nodeId: options.nodeId }))
    return hello
  })
