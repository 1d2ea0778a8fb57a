/**
 * The transport's errors: failing to listen or to dial, and the reasons a connection
 * closes ({@link TransportConnectionError}). Re-exported by Transport.ts.
 */
import { Data, type Schema } from "effect"
import { describeCause } from "../../domain/describe.js"
import type { FrameDecodeError, FrameTooLarge, FrameTruncated } from "../../domain/wire/frame.js"

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
  | "NotCertified" // a TLS peer claims a node its certificate does not name
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
