/**
 * A refusal told the way every client reads it (docs/operations.md, "Errors clients see").
 * An ERR sent before the server's greeting is read differently by each client library:
 * libmariadb takes one with a client-side code (2000-2999) for a malformed packet, and one
 * that comes while it wants TLS for "error before completion of TLS handshake". So a client
 * port that cannot serve a connection greets like a server, reads the login (after TLS, when
 * the client asks for it) and answers that login with the ERR. Pure: bytes in, steps out.
 */
import { Capability, buildErr, buildHandshakeV10, hasCapability, SERVER_CAPABILITIES } from "./protocol.js"
import { encodePackets } from "./packet.js"

export type RefusalStep =
  /** The client asked for TLS: wrap its socket (or, on a member's forward link, go on); `rest` follows the request. */
  | { readonly _tag: "StartTls"; readonly rest: Uint8Array }
  /** Send these bytes (the ERR answering the login) and close. */
  | { readonly _tag: "Answer"; readonly bytes: Uint8Array }
  /** Close without an answer: the bytes are not a MySQL login. */
  | { readonly _tag: "Close"; readonly reason: string }

export interface Refusal {
  readonly code: number
  readonly sqlState: string
  readonly message: string
}

/** A login is a few hundred bytes; anything this large is not one. */
const MAX_LOGIN_BYTES = 64 * 1024
/** What the greeting calls the server: a MariaDB (5.5.5- prefix) that is the cluster's proxy. */
const SERVER_VERSION = "5.5.5-10.11.0-phxmaria-proxy"
/** An SSL request is the first 32 bytes of a login, with CLIENT_SSL set. */
const SSL_REQUEST_LENGTH = 32

export class RefusalSession {
  private buffer = new Uint8Array(0)
  private tlsAsked = false
  private finished = false

  /** `offerTls`: the greeting offers TLS (this node takes client TLS). */
  constructor(private readonly refusal: Refusal, private readonly offerTls: boolean) {}

  /** The server greeting (sequence 0); `salt`: 20 random non-zero bytes. */
  greeting(salt: Uint8Array, connectionId = 0): Uint8Array {
    const capabilities = SERVER_CAPABILITIES | (this.offerTls ? Capability.Ssl : 0)
    return encodePackets(0, buildHandshakeV10({ serverVersion: SERVER_VERSION, connectionId, authPluginData: salt, capabilities })).bytes
  }

  push(chunk: Uint8Array): ReadonlyArray<RefusalStep> {
    if (this.finished) return []
    const joined = new Uint8Array(this.buffer.length + chunk.length)
    joined.set(this.buffer)
    joined.set(chunk, this.buffer.length)
    this.buffer = joined
    if (this.buffer.length < 4) return []
    const length = this.buffer[0]! | (this.buffer[1]! << 8) | (this.buffer[2]! << 16)
    if (length > MAX_LOGIN_BYTES) return this.close(`a first packet of ${length} bytes is no login`)
    if (this.buffer.length < 4 + length) return []
    const seq = this.buffer[3]!
    const payload = this.buffer.subarray(4, 4 + length)
    const rest = this.buffer.slice(4 + length)
    this.buffer = new Uint8Array(0)
    if (!this.tlsAsked && this.offerTls && payload.length === SSL_REQUEST_LENGTH && hasCapability(readU32(payload), Capability.Ssl)) {
      this.tlsAsked = true
      return [{ _tag: "StartTls", rest }]
    }
    this.finished = true
    return [{ _tag: "Answer", bytes: encodePackets((seq + 1) & 0xff, buildErr(this.refusal)).bytes }]
  }

  private close(reason: string): ReadonlyArray<RefusalStep> {
    this.finished = true
    return [{ _tag: "Close", reason }]
  }
}

const readU32 = (b: Uint8Array) => (b[0]! | (b[1]! << 8) | (b[2]! << 16) | (b[3]! << 24)) >>> 0
