/**
 * The transparent MySQL proxy (docs/architecture.md, "Proxy and routing").
 *
 * Client listeners (RW, RO): per accepted connection the target is read from
 * {@link Routing} at accept time; the proxy connects upstream (this node's MariaDB or
 * another node's forward port), sends a PROXY header carrying the client's real address
 * (v1 by default, v2 or off configurable), then relays bytes both ways 1:1.
 *
 * Forward listeners (RW, RO): accept only cluster members' addresses, read the PROXY
 * header the member sent, connect to this node's MariaDB and send a PROXY header of their
 * own with the ORIGINAL client address. The forward RW listener can be told to refuse RW
 * relays and to close every one it holds (the lease drives it).
 *
 * The relay is callback-level (no per-chunk Effect work) with pause/resume backpressure
 * in both directions: a slow side slows the other, nothing is buffered without bound.
 * When either side closes, the other is closed. A client that cannot be served (no
 * target, upstream unreachable, too many connections) gets a MySQL ERR packet (sequence
 * id 0, before any handshake) and is closed. Every failure is a typed, logged error on
 * that one connection; the process never crashes on input.
 */
import { randomBytes } from "node:crypto"
import * as net from "node:net"
import * as tls from "node:tls"
import { Context, Data, Duration, Effect, Layer, Result, Stream } from "effect"
import type * as Scope from "effect/Scope"
import { encodePackets } from "../../domain/mysql/packet.js"
import { buildErr, buildOk } from "../../domain/mysql/protocol.js"
import { ClientCommandWatch, handshakeThreadId } from "../../domain/mysql/killWatch.js"
import { RefusalSession } from "../../domain/mysql/refusal.js"
import { DEFAULT_PROXY_MAX_CONNECTIONS } from "../../config/NodeConfig.js"
import * as PP from "../../domain/mysql/proxyProtocol.js"
import { describeTarget, type Role, Routing, sameTarget, type Target } from "./Routing.js"
import type { LocalMariaDbAddress } from "../../domain/cluster/routing.js"
import * as TcpListener from "../net/TcpListener.js"
import * as HostAddresses from "../net/HostAddresses.js"
import * as PeerTls from "../tls/PeerTls.js"
import { forkScopedLogged } from "../fibers.js"
import { describeCause } from "../../domain/describe.js"
import { isWildcard } from "../../domain/wire/address.js"
import { writeAll } from "../net/writeAll.js"

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

export type ProxyProtocolMode = "v1" | "v2" | "off"

export interface ProxyOptions {
  /** Address of every listener (e.g. "0.0.0.0" or "127.0.0.1"). */
  readonly host: string
  /** Client ports; 0 picks a free port (see {@link ProxyShape.addresses}). */
  readonly rwPort: number
  readonly roPort: number
  /** Forward ports for other members' proxies; omitted = no forward listener for that role. */
  readonly forwardRwPort?: number | undefined
  readonly forwardRoPort?: number | undefined
  /**
   * The members' hosts (IP addresses or names): connections to the forward ports are taken
   * from the addresses they resolve to only (HostAddresses.memberMatcher).
   */
  readonly members?: ReadonlyArray<string> | undefined
  /** This node's MariaDB, the upstream of the forward listeners. */
  readonly localMariaDb?: LocalMariaDbAddress | undefined
  /** PROXY header sent upstream; default "v1". */
  readonly proxyProtocol?: ProxyProtocolMode | undefined
  /** Upstream connect timeout; default 5 seconds. */
  readonly connectTimeout?: Duration.Input | undefined
  /** Time a member has to send its PROXY header on a forward port; default 5 seconds. */
  readonly headerTimeout?: Duration.Input | undefined
  /** Concurrent connections per listener; default 1000. */
  readonly maxConnections?: number | undefined
  /**
   * Relays to this node's own MariaDB, over all listeners together (the client ports' local
   * routes and both forward ports): MariaDB's connections for clients (mariadb.maxConnections),
   * so that the agent's own logins always find room. Default: no bound beyond the listeners'.
   */
  readonly maxLocalConnections?: number | undefined
  /** Whether the forward RW listener starts refusing RW relays; default false. */
  readonly refuseRwInitially?: boolean | undefined
  /**
   * Asked, synchronously, before every chunk a RW client sends to this node's own MariaDB
   * (the RW port routed locally, and the forward RW port): false closes that connection.
   * The node's lease (MasterLease.holdsNow): an agent resumed after a stall past its lease
   * handles queued socket reads before any timer, so only a check on the data path keeps
   * them from a database another master has moved past. Default: always open.
   */
  readonly rwGate?: (() => boolean) | undefined
  /**
   * Mutual TLS between members (docs/operations.md, "Peer TLS"): the forward ports take only
   * dialers holding a node certificate of the cluster's CA, and this proxy dials another
   * member's forward port over TLS, checking that its certificate names that node.
   */
  readonly tls?: PeerTls.PeerTls | undefined
  /**
   * Clients over TLS (docs/operations.md, "Client TLS"): the certificate and key this
   * proxy ends a client's TLS with; it opens its own TLS to MariaDB and reads the
   * plaintext in between (KILL stays visible). Without it a client's SSL request closes
   * the connection.
   */
  readonly clientTls?: { readonly cert: Buffer; readonly key: Buffer } | undefined
  /** With clientTls: a client port answers a login without TLS with an error and closes. */
  readonly requireClientTls?: boolean | undefined
}

const LEASE_CLOSED = "this node no longer holds the master lease"

/** What a relay to this node's own MariaDB is given (Conn.relay). */
interface LocalRelay {
  /** Asked before every client chunk (RW only): false closes the connection. */
  readonly gate: (() => boolean) | undefined
  readonly onThread: (conn: Conn, threadId: number) => void
  readonly onKill: (killer: Conn, threadId: number, seq: number) => void
}

const ER_NO_SUCH_THREAD = 1094
const ER_KILL_DENIED = 1095

export type ListenerName = "rw" | "ro" | "forwardRw" | "forwardRo"

export interface ListenerStats {
  /** Connections open now (including those still connecting upstream). */
  readonly open: number
  readonly accepted: number
  /** Refused: over the bound, no target, unreachable upstream, non-member, bad header. */
  readonly refused: number
  /** Bytes waiting in this process's socket buffers of these connections (bounded by backpressure). */
  readonly buffered: number
  /** Bytes relayed from clients to the server, and back, since start. */
  readonly bytesIn: number
  readonly bytesOut: number
}

export interface ProxyStats {
  readonly listeners: Readonly<Partial<Record<ListenerName, ListenerStats>>>
  /** Open relays per upstream "kind host:port". */
  readonly upstreams: Readonly<Record<string, number>>
}

export interface ProxyShape {
  readonly addresses: Readonly<Partial<Record<ListenerName, { readonly host: string; readonly port: number }>>>
  readonly stats: Effect.Effect<ProxyStats>
  /** Forward RW listener: refuse (true) or accept (false) new RW relays. */
  readonly refuseRw: (refuse: boolean) => Effect.Effect<void>
  /** Forward RO listener: refuse (true) or accept (false) new RO relays (a diverged database serves no one). */
  readonly refuseRo: (refuse: boolean) => Effect.Effect<void>
  /** Forward RW listener: closes every RW relay it holds; returns how many. */
  readonly closeAllRw: Effect.Effect<number>
  /** The members' hosts the forward listeners accept (the log's membership), besides the configured ones. */
  readonly addMemberHosts: (hosts: ReadonlyArray<string>) => Effect.Effect<void>
}

export class Proxy extends Context.Service<Proxy, ProxyShape>()("phxmaria/Proxy") {}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

export class ProxyListenError extends Data.TaggedError("ProxyListenError")<{
  readonly listener: ListenerName
  readonly host: string
  readonly port: number
  readonly cause: unknown
}> {
  override get message() {
    return `proxy ${this.listener} cannot listen on ${this.host}:${this.port}: ${describeCause(this.cause)}`
  }
}

/** A client connection was refused with an ERR packet (bound, no target, not master). */
export class ProxyRefused extends Data.TaggedError("ProxyRefused")<{
  readonly listener: ListenerName
  readonly remote: string
  readonly reason: string
}> {
  override get message() {
    return `${this.listener}: refused ${this.remote}: ${this.reason}`
  }
}

export class ProxyUpstreamError extends Data.TaggedError("ProxyUpstreamError")<{
  readonly upstream: string
  readonly reason: string
}> {
  override get message() {
    return `cannot reach upstream ${this.upstream}: ${this.reason}`
  }
}

/** A forward port peer that is not a member, or whose PROXY header is malformed or late. */
export class ProxyForwardPeerError extends Data.TaggedError("ProxyForwardPeerError")<{
  readonly listener: ListenerName
  readonly remote: string
  readonly reason: string
}> {
  override get message() {
    return `${this.listener}: closed ${this.remote}: ${this.reason}`
  }
}

/** A forward port peer sent no valid PROXY header: it closed first, was too slow, or sent bytes that are not one. */
export class ProxyHeaderError extends Data.TaggedError("ProxyHeaderError")<{
  readonly reason: "closed" | "timeout" | "malformed"
  readonly detail?: string
}> {
  override get message() {
    return this.reason === "closed"
      ? "closed before a PROXY header"
      : this.reason === "timeout"
      ? "no PROXY header in time"
      : `malformed PROXY header: ${this.detail ?? ""}`
  }
}

/** The relay ended because one side closed or failed. */
export class ProxyRelayClosed extends Data.TaggedError("ProxyRelayClosed")<{
  readonly listener: ListenerName
  readonly remote: string
  readonly reason: string
}> {
  override get message() {
    return `${this.listener}: relay for ${this.remote} closed: ${this.reason}`
  }
}



/**
 * What a client port answers when it cannot serve a connection (no master, no replica, a
 * diverged or removed node, an upstream that does not answer): a server-side code, since
 * libmariadb (the mariadb CLI, mysqli, mysqlclient, sysbench) takes an ERR with a client-side
 * code (2000-2999, 5000-5999) from a server for a malformed packet (its ma_net_safe_read).
 * 1105 (ER_UNKNOWN_ERROR) is what Vitess answers in the same case; SQLSTATE 08004 is the
 * standard "server rejected the connection", which drivers and pools treat as retryable.
 */
export const ERR_UNAVAILABLE = 1105
export const SQLSTATE_REJECTED = "08004"
/** MariaDB's own "Too many connections" (1040, 08004). */
export const ERR_TOO_MANY_CONNECTIONS = 1040

const LINGER_MS = 2000

/** Why a client that asked for TLS is closed when the cluster offers none to clients. */
const NO_CLIENT_TLS = "the client asked for TLS, which this node does not offer to clients (mariadb.ssl): closed rather than relayed unread"

/** At most this many refused connections awaiting their login at once (per proxy). */
const MAX_REFUSALS_IN_FLIGHT = 256
/** How long a refused client has to send its login. */
const REFUSAL_LOGIN_MS = 5_000

interface RefusalBudget {
  inFlight: number
  readonly max: number
}

/** Bytes relayed: client -> server (in) and back (out). */
interface Traffic {
  bytesIn: number
  bytesOut: number
}

/** How a refusal answers a client that asks for TLS: absent, TLS is not offered (Conn.refuse). */
interface RefusalTls {
  /** End the client's TLS here with this certificate; undefined: a member's forward link (its relay ended it). */
  readonly serve: tls.TlsOptions | undefined
}

/** A greeting's scramble: 20 printable bytes (never NUL). */
const refusalSalt = (): Uint8Array => randomBytes(20).map((b) => 33 + (b % 94))

/** How a relay answers a client's SSL request (ProxyOptions.clientTls). */
interface TlsBridge {
  /** End the client's TLS here, with this certificate (a client port); undefined: the client side is a member's forward link. */
  readonly serve: tls.TlsOptions | undefined
  /** Open TLS to the upstream: this relay is the one reaching MariaDB. */
  readonly toUpstream: boolean
  /** A client port that refuses a login without TLS (ProxyOptions.requireClientTls). */
  readonly requireTls?: boolean
}

// ---------------------------------------------------------------------------
// One connection: sockets with handlers attached at once
// ---------------------------------------------------------------------------

/**
 * A client (or forward peer) socket and, once connected, its upstream. Handlers are
 * attached in the constructor so an 'error' is never unhandled; {@link done} resolves
 * when both sockets are closed.
 */
class Conn {
  upstream: net.Socket | undefined = undefined
  target: Target | undefined = undefined
  closeReason: string | undefined = undefined
  private clientClosed = false
  private upstreamClosed = true
  private doneListeners: Array<() => void> = []
  private lingerTimer: ReturnType<typeof setTimeout> | undefined = undefined

  /** The client's endpoints, read at accept time (they are gone once the socket closes). */
  readonly source: PP.Endpoint
  readonly destination: PP.Endpoint

  /** The client's socket: the accepted one, or the TLS session on it once the client asked for TLS. */
  client: net.Socket
  /** Where this connection's relayed bytes are counted (its listener's totals). */
  traffic: Traffic = { bytesIn: 0, bytesOut: 0 }
  /** The proxy's refusals under way (Conn.refuse). */
  refusals: RefusalBudget = { inFlight: 0, max: MAX_REFUSALS_IN_FLIGHT }

  constructor(client: net.Socket, readonly remote: string) {
    this.client = client
    this.source = { address: client.remoteAddress ?? "", port: client.remotePort ?? 0 }
    this.destination = { address: client.localAddress ?? "", port: client.localPort ?? 0 }
    client.setNoDelay(true)
    client.on("error", (e) => this.noteReason(`client error: ${e.message}`))
    client.once("close", () => {
      this.clientClosed = true
      this.noteReason("client closed")
      // Nothing the server still sends can reach the client: close upstream at once (a
      // server blocked writing a large result would never read a FIN).
      if (this.upstream !== undefined && !this.upstreamClosed) this.upstream.destroy()
      this.checkDone()
    })
  }

  /** Bytes waiting in this process's socket buffers (both directions). */
  get buffered(): number {
    return this.client.writableLength + (this.upstream?.writableLength ?? 0)
  }

  get clientGone(): boolean {
    return this.clientClosed || this.client.destroyed
  }

  private noteReason(reason: string): void {
    if (this.closeReason === undefined) this.closeReason = reason
  }

  /** Half-closes `socket` (flushing what was already written), destroying it after a linger. */
  private closeOther(socket: net.Socket): void {
    if (socket.destroyed) return
    socket.end()
    if (this.lingerTimer === undefined) {
      this.lingerTimer = setTimeout(() => this.destroy(), LINGER_MS)
      this.lingerTimer.unref()
    }
  }

  private checkDone(): void {
    if (!this.clientClosed || !this.upstreamClosed) return
    if (this.lingerTimer !== undefined) clearTimeout(this.lingerTimer)
    const ls = this.doneListeners
    this.doneListeners = []
    for (const l of ls) l()
  }

  /** Resolves when both sockets are closed; interruption destroys them. */
  readonly done: Effect.Effect<void> = Effect.callback((resume) => {
    if (this.clientClosed && this.upstreamClosed) return resume(Effect.void)
    const l = () => resume(Effect.void)
    this.doneListeners.push(l)
    return Effect.sync(() => {
      this.doneListeners = this.doneListeners.filter((x) => x !== l)
      this.destroy()
    })
  })

  /**
   * Refuses the client the way every client library reads it (domain/mysql/refusal.ts): a
   * greeting, then the ERR as the answer to its login, inside TLS when it asks and `tlsMode`
   * offers it (`serve` undefined: a member's forward link, whose relay ended the client's
   * TLS). `early`: bytes already read from the client. A client that sends no login within
   * 10 s is closed.
   */
  refuse(code: number, sqlState: string, message: string, tlsMode?: RefusalTls, early?: Uint8Array): void {
    this.noteReason(message)
    if (this.clientGone) return
    // Under a storm of refusals, the ones past the bound are closed without an answer.
    const budget = this.refusals
    if (budget.inFlight >= budget.max) return this.destroy(`refused (${message}), closed at once: ${budget.max} refusals under way`)
    budget.inFlight++
    const session = new RefusalSession({ code, sqlState, message }, tlsMode !== undefined)
    let socket = this.client
    const slow = setTimeout(() => this.destroy(`refused, and no login came within ${REFUSAL_LOGIN_MS / 1000} s`), REFUSAL_LOGIN_MS)
    slow.unref()
    socket.once("close", () => {
      clearTimeout(slow)
      budget.inFlight--
    })
    const onData = (chunk: Uint8Array): void => {
      for (const step of session.push(chunk)) {
        if (step._tag === "Answer") {
          clearTimeout(slow)
          socket.off("data", onData)
          socket.write(step.bytes)
          this.closeOther(socket)
        } else if (step._tag === "Close") {
          clearTimeout(slow)
          this.destroy(`refused: ${step.reason}`)
        } else if (tlsMode?.serve !== undefined) {
          socket.off("data", onData)
          socket.pause()
          // What followed the request in the same read is the start of the client's TLS handshake.
          if (step.rest.length > 0) socket.unshift(Buffer.from(step.rest))
          const secured = new tls.TLSSocket(socket, { isServer: true, ...tlsMode.serve })
          secured.on("error", (e) => this.destroy(`client TLS: ${e.message}`))
          secured.on("data", onData)
          socket = secured
          this.client = secured
        } else if (step.rest.length > 0) onData(step.rest)
      }
    }
    socket.write(session.greeting(refusalSalt()))
    socket.on("data", onData)
    if (early !== undefined && early.length > 0) onData(early)
    socket.resume()
  }

  destroy(reason?: string): void {
    if (reason !== undefined) this.noteReason(reason)
    this.client.destroy()
    this.upstream?.destroy()
  }

  /**
   * Relays `client` <-> `upstream` (already connected). `first` is written upstream
   * before any client byte (the PROXY header and bytes read past a received header).
   */
  /** The MariaDB thread id of this relay's session (to the local MariaDB only). */
  threadId: number | undefined = undefined
  /** Set on relays to the local MariaDB: KILL never reaches it (see killWatch.ts). */
  watch: ClientCommandWatch | undefined = undefined

  /** Answers the client with an OK or ERR packet (the reply to its command `seq`). */
  reply(seq: number, payload: Uint8Array): void {
    if (!this.clientGone) this.client.write(encodePackets((seq + 1) & 0xff, payload).bytes)
  }

  relay(upstream: net.Socket, first: ReadonlyArray<Uint8Array>, local?: LocalRelay, clientBytes?: Uint8Array, bridge?: TlsBridge): void {
    const gate = local?.gate
    this.upstream = upstream
    this.upstreamClosed = false
    const client = this.client
    upstream.on("error", (e) => this.noteReason(`upstream error: ${e.message}`))
    upstream.once("close", () => {
      this.upstreamClosed = true
      this.noteReason("upstream closed")
      if (!this.clientClosed) this.closeOther(this.client)
      this.checkDone()
    })
    if (this.clientGone) {
      upstream.destroy()
      return
    }
    if (gate !== undefined && !gate()) {
      this.destroy(LEASE_CLOSED)
      return
    }
    for (const b of first) if (b.length > 0) upstream.write(b)
    // A relay to another member reads the login only (for an SSL request); that member watches the commands.
    const requireTls = bridge?.requireTls === true && bridge.serve !== undefined
    if (local === undefined && bridge !== undefined) this.watch = new ClientCommandWatch({ commands: false, requireTls })
    if (local !== undefined) {
      this.watch = new ClientCommandWatch({ commands: true, requireTls })
      // The server's greeting carries the session's thread id (what a KILL names).
      upstream.once("data", (chunk: Buffer) => {
        this.threadId = handshakeThreadId(chunk)
        if (this.threadId !== undefined) local.onThread(this, this.threadId)
      })
    }
    // The sockets bytes move between now: TLS sessions on the accepted ones once a client asked for TLS.
    let cl = client
    let up = upstream
    /** A client chunk on its way to the upstream: the lease gate, then the KILL watch. */
    const fromClient = (chunk: Uint8Array) => {
      if (gate !== undefined && !gate()) return this.destroy(LEASE_CLOSED)
      const watch = this.watch
      if (watch === undefined) {
        if (!up.write(chunk)) cl.pause()
        return
      }
      for (const v of watch.push(chunk)) {
        if (v._tag === "Forward") {
          if (!writeAll(up, v.bytes)) cl.pause()
        } else if (v._tag === "Kill") local!.onKill(this, v.threadId, v.seq)
        else if (v._tag === "Refuse") this.reply(v.seq, buildErr(v))
        else if (v._tag === "StartTls") {
          // Never an opaque stream: KILL must stay readable (docs/architecture.md, "Client TLS").
          if (bridge === undefined) return this.destroy(NO_CLIENT_TLS)
          up.write(v.bytes)
          return startTls(bridge, v.rest)
        } else if (v.answer !== undefined) {
          this.noteReason(v.reason)
          this.reply(v.answer.seq, buildErr(v.answer))
          cl.end()
          return up.destroy()
        } else return this.destroy(v.reason)
      }
    }
    const detachers: Array<() => void> = []
    const traffic = this.traffic
    const pipe = (from: net.Socket, to: net.Socket) => {
      const onData = (chunk: Buffer) => {
        if (from === cl) {
          traffic.bytesIn += chunk.length
          return fromClient(chunk)
        }
        traffic.bytesOut += chunk.length
        if (!to.write(chunk)) from.pause()
      }
      const onDrain = () => {
        if (!from.destroyed) from.resume()
      }
      const onEnd = () => this.closeOther(to)
      from.on("data", onData)
      to.on("drain", onDrain)
      from.once("end", onEnd)
      detachers.push(() => {
        from.off("data", onData)
        to.off("drain", onDrain)
        from.off("end", onEnd)
      })
    }
    const flow = () => {
      pipe(cl, up)
      pipe(up, cl)
      if (up.writableNeedDrain) cl.pause()
      else cl.resume()
      up.resume()
    }
    /**
     * The client's SSL request went upstream: this relay ends the client's TLS (a client
     * port) and opens its own to MariaDB (when it is the one reaching it), then relays the
     * plaintext in between, where the watch reads it.
     */
    const startTls = (b: TlsBridge, rest: Uint8Array) => {
      for (const detach of detachers.splice(0)) detach()
      cl.pause()
      up.pause()
      if (b.serve !== undefined) {
        // What followed the request in the same read is the start of the client's TLS handshake.
        if (rest.length > 0) cl.unshift(Buffer.from(rest))
        const secured = new tls.TLSSocket(cl, { isServer: true, ...b.serve })
        secured.on("error", (e) => this.destroy(`client TLS: ${e.message}`))
        const slow = setTimeout(() => this.destroy("the client's TLS handshake did not finish within 10 s"), 10_000)
        secured.once("secure", () => clearTimeout(slow))
        secured.once("close", () => clearTimeout(slow))
        cl = secured
        this.client = secured
      }
      if (b.toUpstream) {
        // Our own server, over its socket in the private datadir: nothing to verify.
        const secured = tls.connect({ socket: up, rejectUnauthorized: false })
        secured.on("error", (e) => this.destroy(`TLS to MariaDB: ${e.message}`))
        up = secured
        this.upstream = secured
      }
      flow()
      if (b.serve === undefined && rest.length > 0) fromClient(rest)
    }
    flow()
    if (clientBytes !== undefined && clientBytes.length > 0) fromClient(clientBytes)
  }
}

/** Connects to `host:port`; the socket comes back connected, or a typed error. */
const connect = (
  to: { readonly host: string; readonly port: number; readonly socket?: string | undefined },
  label: string,
  timeout: Duration.Input,
  localAddress: string | undefined,
  secure?: tls.ConnectionOptions
): Effect.Effect<net.Socket, ProxyUpstreamError> =>
  Effect.callback<net.Socket, ProxyUpstreamError>((resume) => {
    // A member's name is looked up once per TTL, not per relay (HostAddresses.dialLookup).
    const at = { host: to.host, port: to.port, noDelay: true, lookup: HostAddresses.dialLookup, ...(localAddress !== undefined ? { localAddress } : {}) }
    const socket: net.Socket = to.socket !== undefined
      ? net.connect({ path: to.socket })
      : secure === undefined ? net.connect(at) : tls.connect({ ...at, ...secure })
    // Never an unhandled 'error' between connect and the relay's own handlers.
    socket.on("error", () => {})
    socket.pause()
    let settled = false
    const onError = (e: Error) => {
      if (settled) return
      settled = true
      socket.destroy()
      resume(Effect.fail(new ProxyUpstreamError({ upstream: label, reason: e.message })))
    }
    socket.once("error", onError)
    socket.once(secure === undefined ? "connect" : "secureConnect", () => {
      if (settled) return
      settled = true
      socket.off("error", onError)
      resume(Effect.succeed(socket))
    })
    return Effect.sync(() => {
      if (!settled) {
        settled = true
        socket.destroy()
      }
    })
  }).pipe(
    Effect.timeoutOrElse({
      duration: timeout,
      orElse: () => Effect.fail(new ProxyUpstreamError({ upstream: label, reason: `connect timed out after ${Duration.format(Duration.fromInputUnsafe(timeout))}` }))
    })
  )

/** Reads a PROXY header from the first bytes of `socket`; returns it and the bytes past it. */
const readHeader = (
  socket: net.Socket,
  timeout: Duration.Input
): Effect.Effect<{ readonly header: PP.ProxyHeader; readonly rest: Uint8Array }, ProxyHeaderError> =>
  Effect.callback<{ readonly header: PP.ProxyHeader; readonly rest: Uint8Array }, ProxyHeaderError>((resume) => {
    let buf = new Uint8Array(0)
    const cleanup = () => {
      socket.off("data", onData)
      socket.off("close", onClose)
      socket.pause()
    }
    const onClose = () => {
      cleanup()
      resume(Effect.fail(new ProxyHeaderError({ reason: "closed" })))
    }
    const onData = (chunk: Buffer) => {
      const next = new Uint8Array(buf.length + chunk.length)
      next.set(buf)
      next.set(chunk, buf.length)
      buf = next
      const r = PP.parse(buf)
      if (Result.isFailure(r)) {
        cleanup()
        return resume(Effect.fail(new ProxyHeaderError({ reason: "malformed", detail: r.failure.message })))
      }
      if (r.success._tag === "NeedMore") return
      cleanup()
      resume(Effect.succeed({ header: r.success.header, rest: buf.slice(r.success.consumed) }))
    }
    socket.on("data", onData)
    socket.once("close", onClose)
    return Effect.sync(cleanup)
  }).pipe(
    Effect.timeoutOrElse({ duration: timeout, orElse: () => Effect.fail(new ProxyHeaderError({ reason: "timeout" })) })
  )

// ---------------------------------------------------------------------------
// make
// ---------------------------------------------------------------------------

interface ListenerState extends Traffic {
  readonly name: ListenerName
  readonly conns: Set<Conn>
  accepted: number
  refused: number
}

export const make = (
  options: ProxyOptions
): Effect.Effect<ProxyShape, ProxyListenError, Scope.Scope | Routing> =>
  Effect.gen(function*() {
    const routing = yield* Routing
    const mode = options.proxyProtocol ?? "v1"
    const connectTimeout = options.connectTimeout ?? "5 seconds"
    const headerTimeout = options.headerTimeout ?? "5 seconds"
    const maxConnections = options.maxConnections ?? DEFAULT_PROXY_MAX_CONNECTIONS
    const maxLocal = options.maxLocalConnections ?? Infinity
    let localRelays = 0
    /** Refusals under way (greeting sent, login awaited): beyond the bound a refused connection is just closed. */
    const refusals: RefusalBudget = { inFlight: 0, max: MAX_REFUSALS_IN_FLIGHT }
    /** Refusals are logged at most once a second per listener, with how many were not (a storm must not flood the log). */
    const refusalLog = new Map<ListenerName, { at: number; unlogged: number }>()
    const logRefusal = (listener: ListenerName, remote: string, reason: string, level: "warning" | "info" = "warning") =>
      Effect.suspend(() => {
        const now = performance.now()
        const last = refusalLog.get(listener) ?? { at: -Infinity, unlogged: 0 }
        refusalLog.set(listener, last)
        if (now - last.at < 1_000) {
          last.unlogged++
          return Effect.void
        }
        const more = last.unlogged > 0 ? ` (and ${last.unlogged} more refused since the last such line)` : ""
        last.at = now
        last.unlogged = 0
        const message = new ProxyRefused({ listener, remote, reason }).message + more
        return level === "warning" ? Effect.logWarning(message) : Effect.logInfo(message)
      })
    const members = yield* HostAddresses.memberMatcher(options.members ?? [])
    // Forward relays leave from this node's own address (other members' allowlists hold it): an IP, a name resolved.
    const sourceAddress = isWildcard(options.host) ? undefined : yield* HostAddresses.listenAddress(options.host).pipe(
      Effect.mapError((cause) => new ProxyListenError({ listener: "rw", host: options.host, port: options.rwPort, cause }))
    )
    let refusingRw = options.refuseRwInitially ?? false
    let refusingRo = false
    const upstreamCounts = new Map<string, number>()
    const states = new Map<ListenerName, ListenerState>()
    const stateOf = (name: ListenerName): ListenerState => {
      const s: ListenerState = { name, conns: new Set(), accepted: 0, refused: 0, bytesIn: 0, bytesOut: 0 }
      states.set(name, s)
      return s
    }

    const logEnd = (conn: Conn, listener: ListenerName) => {
      const message = new ProxyRelayClosed({ listener, remote: conn.remote, reason: conn.closeReason ?? "closed" }).message
      // Closed by the lease gate: worth seeing (it follows a stall of this agent).
      return conn.closeReason === LEASE_CLOSED ? Effect.logWarning(message) : Effect.logDebug(message)
    }

    /**
     * Header for `source` -> `destination` (none when off). Fails when the address cannot be
     * expressed: relaying without it would make MariaDB see the proxy's own address.
     */
    const headerBytes = (source: PP.Endpoint, destination: PP.Endpoint): Effect.Effect<ReadonlyArray<Uint8Array>, PP.ProxyHeaderError> => {
      if (mode === "off") return Effect.succeed([])
      return Effect.map(Effect.fromResult(PP.build(mode === "v1" ? 1 : 2, source, destination)), (h) => [h])
    }

    const countUpstream = (label: string, delta: number) => {
      const n = (upstreamCounts.get(label) ?? 0) + delta
      if (n <= 0) upstreamCounts.delete(label)
      else upstreamCounts.set(label, n)
    }

    /** Common frame: bound check, registration, cleanup, log. */
    const withConn = (
      state: ListenerState,
      socket: net.Socket,
      body: (conn: Conn) => Effect.Effect<void>
    ): Effect.Effect<void> => {
      const conn = new Conn(socket, TcpListener.remoteOf(socket))
      conn.traffic = state
      conn.refusals = refusals
      state.accepted++
      if (state.conns.size >= maxConnections) {
        state.refused++
        conn.refuse(ERR_TOO_MANY_CONNECTIONS, SQLSTATE_REJECTED, "too many connections through this proxy", refusalTls(state.name))
        return Effect.andThen(
          logRefusal(state.name, conn.remote, `over ${maxConnections} connections`),
          conn.done
        )
      }
      state.conns.add(conn)
      return body(conn).pipe(
        Effect.andThen(conn.done),
        Effect.andThen(logEnd(conn, state.name)),
        Effect.ensuring(Effect.sync(() => {
          state.conns.delete(conn)
          if (conn.threadId !== undefined && byThread.get(conn.threadId) === conn) byThread.delete(conn.threadId)
          conn.destroy()
        }))
      )
    }

    /**
     * Sessions on this node's MariaDB by thread id. A KILL from a client is done here, by
     * closing the victim's relay: MariaDB's own KILL would end a commit's semi-sync wait and
     * show the transaction before the log has chosen it; a closed connection leaves the
     * server thread waiting (docs/architecture.md, "KILL and the semi-sync wait").
     */
    const byThread = new Map<number, Conn>()
    const onKill = (killer: Conn, threadId: number, seq: number) => {
      const victim = byThread.get(threadId)
      if (victim === undefined || victim.clientGone) {
        return killer.reply(seq, buildErr({ code: ER_NO_SUCH_THREAD, sqlState: "HY000", message: `Unknown thread id: ${threadId}` }))
      }
      if (victim.watch?.user === undefined || victim.watch.user !== killer.watch?.user) {
        return killer.reply(seq, buildErr({
          code: ER_KILL_DENIED,
          sqlState: "HY000",
          message: `You are not owner of thread ${threadId} (through the cluster's proxy a session may kill only sessions of its own user)`
        }))
      }
      killer.reply(seq, buildOk())
      victim.destroy(`KILL from thread ${killer.threadId ?? "?"}: connection closed (its server thread is not killed)`)
    }
    const clientServe: tls.TlsOptions | undefined = options.clientTls === undefined
      ? undefined
      : { cert: options.clientTls.cert, key: options.clientTls.key, minVersion: "TLSv1.2" }
    /** A refusal on a client port offers TLS when this node takes client TLS; on a forward link the member's relay ended it. */
    const refusalTls = (listener: ListenerName): RefusalTls | undefined =>
      clientServe === undefined ? undefined : { serve: listener === "rw" || listener === "ro" ? clientServe : undefined }
    const localRelay = (role: Role): LocalRelay => ({
      gate: role === "rw" ? options.rwGate : undefined,
      onThread: (conn, threadId) => byThread.set(threadId, conn),
      onKill
    })

    /** Connects to `target`, relays `first` + the client; ERR to the client if unreachable. */
    const connectAndRelay = (
      state: ListenerState,
      conn: Conn,
      to: { readonly host: string; readonly port: number; readonly socket?: string | undefined },
      label: string,
      first: Effect.Effect<ReadonlyArray<Uint8Array>, PP.ProxyHeaderError>,
      localAddress?: string,
      local?: LocalRelay,
      clientBytes?: Uint8Array,
      secure?: tls.ConnectionOptions,
      bridge?: TlsBridge
    ): Effect.Effect<void> =>
      Effect.gen(function*() {
        if (local !== undefined && localRelays >= maxLocal) {
          state.refused++
          yield* logRefusal(state.name, conn.remote, `over ${maxLocal} relays to this node's MariaDB`)
          conn.refuse(ERR_TOO_MANY_CONNECTIONS, SQLSTATE_REJECTED, "too many connections to this node's database (mariadb.maxConnections)", refusalTls(state.name), clientBytes)
          return
        }
        // Counted from before the connect, so concurrent connects cannot all pass the bound;
        // given back when the upstream closes (or was never had).
        if (local !== undefined) localRelays++
        const up = yield* Effect.result(connect(to, label, connectTimeout, localAddress, secure)).pipe(
          Effect.onExit((exit) => Effect.sync(() => {
            if (local === undefined) return
            if (exit._tag === "Success" && Result.isSuccess(exit.value)) exit.value.success.once("close", () => localRelays--)
            else localRelays--
          }))
        )
        if (Result.isFailure(up)) {
          state.refused++
          yield* logRefusal(state.name, conn.remote, up.failure.message)
          conn.refuse(ERR_UNAVAILABLE, SQLSTATE_REJECTED, up.failure.message, refusalTls(state.name), clientBytes)
          return
        }
        const upstream = up.success
        if (conn.clientGone) {
          upstream.destroy()
          return
        }
        const bytes = yield* Effect.result(first)
        if (Result.isFailure(bytes)) {
          upstream.destroy()
          state.refused++
          yield* Effect.logWarning(`proxy ${state.name}: closed ${conn.remote}: ${bytes.failure.message}`)
          conn.destroy(bytes.failure.message)
          return
        }
        countUpstream(label, 1)
        upstream.once("close", () => countUpstream(label, -1))
        conn.relay(upstream, bytes.success, local, clientBytes, bridge)
      })

    // --- client listeners ---------------------------------------------------
    const onClient = (state: ListenerState, role: Role) => (socket: net.Socket): Effect.Effect<void> =>
      withConn(state, socket, (conn) =>
        Effect.gen(function*() {
          const routes = yield* routing.current
          const target = routes[role]
          conn.target = target
          if (target.kind === "none") {
            state.refused++
            yield* logRefusal(state.name, conn.remote, target.reason)
            conn.refuse(ERR_UNAVAILABLE, SQLSTATE_REJECTED, target.reason, refusalTls(state.name))
            return
          }
          const label = describeTarget(target)
          // To another member from this node's own address: its forward port accepts members only.
          yield* connectAndRelay(state, conn, target, label, headerBytes(conn.source, conn.destination),
            target.kind === "forward" ? sourceAddress : undefined,
            target.kind === "local" ? localRelay(role) : undefined, undefined,
            target.kind === "forward" && options.tls !== undefined ? PeerTls.clientOptions(options.tls, target.nodeId) : undefined,
            clientServe === undefined ? undefined : { serve: clientServe, toUpstream: target.kind === "local", requireTls: options.requireClientTls === true })
        }))

    // --- forward listeners --------------------------------------------------
    const onForward = (state: ListenerState, role: Role) => (socket: net.Socket): Effect.Effect<void> => {
      // With TLS the handshake already required the cluster CA; the certificate must also be a node's.
      const refusal = !members.isMember(socket.remoteAddress ?? "")
        ? "not a cluster member"
        : options.tls !== undefined && PeerTls.peerNodeId(socket as tls.TLSSocket) === undefined
        ? "its certificate names no node of the cluster"
        : undefined
      if (refusal !== undefined) {
        socket.on("error", () => {})
        socket.destroy()
        state.accepted++
        state.refused++
        return Effect.logWarning(new ProxyForwardPeerError({ listener: state.name, remote: TcpListener.remoteOf(socket), reason: refusal }).message)
      }
      return withConn(state, socket, (conn) =>
        Effect.gen(function*() {
          const got = yield* Effect.result(readHeader(socket, headerTimeout))
          if (Result.isFailure(got)) {
            state.refused++
            conn.destroy(got.failure.message)
            yield* Effect.logWarning(new ProxyForwardPeerError({ listener: state.name, remote: conn.remote, reason: got.failure.message }).message)
            return
          }
          const { header, rest } = got.success
          if (header._tag !== "Proxied") {
            // Members always send the client's address; without it MariaDB would see the member's.
            state.refused++
            conn.destroy("PROXY header without an address")
            yield* Effect.logWarning(new ProxyForwardPeerError({ listener: state.name, remote: conn.remote, reason: "PROXY header without an address" }).message)
            return
          }
          if ((role === "rw" && refusingRw) || (role === "ro" && refusingRo)) {
            state.refused++
            const reason = role === "rw"
              ? "this node is not the master: it refuses read-write connections"
              : "this node's database cannot serve reads (diverged from the cluster)"
            yield* logRefusal(state.name, conn.remote, reason, "info")
            conn.refuse(ERR_UNAVAILABLE, SQLSTATE_REJECTED, reason, refusalTls(state.name), rest)
            return
          }
          const local = options.localMariaDb
          if (local === undefined) {
            state.refused++
            conn.refuse(ERR_UNAVAILABLE, SQLSTATE_REJECTED, "this node has no local MariaDB configured", refusalTls(state.name), rest)
            return
          }
          const label = `local ${local.socket ?? `${local.host}:${local.port}`}`
          yield* connectAndRelay(state, conn, local, label,
            Effect.map(headerBytes(header.source, header.destination), (h) => h), undefined,
            localRelay(role), rest, undefined,
            clientServe === undefined ? undefined : { serve: undefined, toUpstream: true })
        }))
    }

    // --- listeners ------------------------------------------------------------
    const addresses: Partial<Record<ListenerName, { readonly host: string; readonly port: number }>> = {}
    const open = (name: ListenerName, port: number, onSocket: (state: ListenerState) => (s: net.Socket) => Effect.Effect<void>, secure?: tls.TlsOptions) =>
      Effect.gen(function*() {
        const state = stateOf(name)
        const l = yield* TcpListener.listen({
          host: options.host,
          port,
          tls: secure,
          component: `proxy ${name}`,
          listenError: (cause) => new ProxyListenError({ listener: name, host: options.host, port, cause }),
          onSocket: onSocket(state)
        })
        addresses[name] = l.address
        return state
      })

    const forwardTls = options.tls === undefined ? undefined : PeerTls.serverOptions(options.tls)
    const rwState = yield* open("rw", options.rwPort, (s) => onClient(s, "rw"))
    yield* open("ro", options.roPort, (s) => onClient(s, "ro"))
    const forwardRwState = options.forwardRwPort === undefined
      ? undefined
      : yield* open("forwardRw", options.forwardRwPort, (s) => onForward(s, "rw"), forwardTls)
    if (options.forwardRoPort !== undefined) yield* open("forwardRo", options.forwardRoPort, (s) => onForward(s, "ro"), forwardTls)

    // Master switch: every RW connection to a target other than the current one closes.
    yield* routing.changes.pipe(
      Stream.runForEach((routes) =>
        Effect.gen(function*() {
          let closed = 0
          for (const conn of rwState.conns) {
            if (conn.target !== undefined && !sameTarget(conn.target, routes.rw)) {
              conn.destroy("RW route changed")
              closed++
            }
          }
          if (closed > 0) yield* Effect.logInfo(`proxy rw: route now ${describeTarget(routes.rw)}; closed ${closed} connections to the old target`)
        })
      ),
      forkScopedLogged("proxy: following routes")
    )

    return {
      addresses,
      stats: Effect.sync(() => {
        const listeners: Partial<Record<ListenerName, ListenerStats>> = {}
        for (const [name, s] of states) {
          let buffered = 0
          for (const c of s.conns) buffered += c.buffered
          listeners[name] = { open: s.conns.size, accepted: s.accepted, refused: s.refused, buffered, bytesIn: s.bytesIn, bytesOut: s.bytesOut }
        }
        return { listeners, upstreams: Object.fromEntries(upstreamCounts) }
      }),
      refuseRw: (refuse) =>
        Effect.sync(() => {
          refusingRw = refuse
        }),
      refuseRo: (refuse) =>
        Effect.sync(() => {
          refusingRo = refuse
        }),
      addMemberHosts: members.add,
      closeAllRw: Effect.sync(() => {
        if (forwardRwState === undefined) return 0
        const n = forwardRwState.conns.size
        for (const conn of forwardRwState.conns) conn.destroy("closeAllRw")
        return n
      })
    } satisfies ProxyShape
  })

export const layer = (options: ProxyOptions): Layer.Layer<Proxy, ProxyListenError, Routing> => Layer.effect(Proxy, make(options))
