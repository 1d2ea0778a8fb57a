/**
 * The admin HTTP listener (docs/operations.md, "Admin HTTP"): GET /status as JSON, the
 * status page (/), /cluster, /history and /metrics; health probes for load balancers
 * (/primary, /replica, /read-only, /health, /ready); GET /backup and the changes (POST
 * /switchover, /members, /users) for members, POST /rebuild from this machine only.
 * Anything else gets 404/405; a malformed request closes that connection (Node's parser
 * rejects it) and is logged.
 */
import { Data, Effect, Exit, Scope } from "effect"
import { timingSafeEqual } from "node:crypto"
import { createServer, type IncomingMessage, type ServerResponse } from "node:http"
import { createServer as createHttpsServer } from "node:https"
import { createServer as createNetServer, type Socket } from "node:net"
import type { TLSSocket } from "node:tls"
import * as PeerTls from "../tls/PeerTls.js"
import type { Readable } from "node:stream"

export class AdminListenError extends Data.TaggedError("AdminListenError")<{
  readonly host: string
  readonly port: number
  readonly cause: unknown
}> {}

/** 127.0.0.0/8 and ::1, also as IPv4-mapped IPv6. */
const isLoopback = (address: string | undefined): boolean =>
  address !== undefined && (address === "::1" || /^(::ffff:)?127\./.test(address))

export class AdminBadRequest extends Data.TaggedError("AdminBadRequest")<{
  readonly remote: string
  readonly cause: unknown
}> {}

/** A stream offered on GET /backup: its headers and body. */
export interface StreamOffer {
  readonly headers: Readonly<Record<string, string>>
  readonly body: Readable
}

/** Why this node will not give a copy now (409 with the message). */
export class OfferRefused extends Data.TaggedError("OfferRefused")<{ readonly message: string }> {}

/** A health answer: 200 when `ok`, else 503, with `body` as JSON. */
export interface Health {
  readonly ok: boolean
  readonly body: unknown
}

/** A view (GET, behind admin.openStatus like /status): its body and content type. */
export interface View {
  readonly contentType: string
  readonly body: string
}

/** Why a request's Authorization header does not carry the admin token (undefined: it does). */
const tokenRefusal = (token: string | undefined, authorization: string | undefined): string | undefined => {
  if (token === undefined) return "this node has no admin token (admin.token or admin.tokenFile): it takes no changes over HTTP"
  const given = Buffer.from(authorization?.startsWith("Bearer ") ? authorization.slice(7) : "")
  const wanted = Buffer.from(token)
  return given.length === wanted.length && timingSafeEqual(given, wanted)
    ? undefined
    : "this call needs the cluster's admin token (Authorization: Bearer ...; the CLI reads it from --config, --token or PHXMARIA_ADMIN_TOKEN)"
}

/** Serves the admin port (see the module comment) until the scope closes; each request is evaluated when it comes. */
export const serve = <A>(options: {
  /**
   * The cluster's admin token: every POST and DELETE, and GET /backup (a copy of the
   * database), needs it as `Authorization: Bearer <token>`; without one configured they are refused.
   */
  readonly token?: string | undefined
  /** false: GET /status needs the token too (default: open, like GET /replica). */
  readonly openStatus?: boolean | undefined
  /**
   * Peer TLS: the port also speaks HTTPS (told apart by the first byte), and GET /backup
   * is served only there, to a client holding a node certificate of the cluster's CA.
   */
  readonly tls?: PeerTls.PeerTls | undefined
  readonly host: string
  readonly port: number
  /**
   * Whether a connection's remote address is one of the cluster's members (their hosts,
   * resolved: services/net/HostAddresses.ts): GET /backup and the changes are taken from
   * members and loopback only.
   */
  readonly isPeer?: ((address: string) => boolean) | undefined
  readonly status: Effect.Effect<A>
  /**
   * Health probes by path (GET, HEAD or OPTIONS; 200 when ok, else 503, JSON; open like
   * GET /replica always was): what load balancers and orchestrators ask, in Patroni's
   * conventions. Each gets the request's query (e.g. /replica?lag=N).
   */
  readonly probes?: Readonly<Record<string, (query: URLSearchParams) => Effect.Effect<Health>>>
  /** Views by path (GET; like /status they need the token when openStatus is false): /metrics, /cluster, /history. */
  readonly views?: Readonly<Record<string, Effect.Effect<View>>>
  /** GET /: the status page (static: its data comes from /cluster, which follows openStatus). */
  readonly page?: string
  /**
   * POST /users?name=&host=&hash=[&grant=...][&update=1], asked of the master (loopback and
   * members only): an application user made through the log. 200 when done, 409 refused.
   */
  readonly users?: { readonly add: (query: URLSearchParams) => Effect.Effect<Health> }
  /**
   * POST /rebuild: 202 when taken, 409 when refused. Destructive, so besides the token only
   * loopback callers (the CLI on this machine) are heard.
   */
  readonly rebuild?: Effect.Effect<Health>
  /**
   * GET /backup: a copy of this node's database for a peer that rebuilds (200 and the
   * stream, 409 when refused), taken from loopback and the members (`isPeer`) only. The
   * offer's scope closes when the response ends or the connection drops.
   */
  readonly backup?: { readonly offer: Effect.Effect<StreamOffer, OfferRefused, Scope.Scope> }
  /**
   * POST /switchover[?to=N], asked of the master: 200 when a new master took over, 409 when
   * refused (JSON either way). From loopback and the members (`isPeer`) only.
   */
  readonly switchover?: { readonly run: (to: number | undefined) => Effect.Effect<Health> }
  /**
   * Membership changes, asked of the master (loopback and members only), each 200 once the
   * log governs by the new set, 409 when refused: DELETE /members/{id}; POST
   * /members?id=&host=&port=&adminPort=[&rwPort=&roPort=&forwardRwPort=&forwardRoPort=]
   * (a learner); POST /members/{id}/voter.
   */
  readonly members?: {
    readonly remove: (id: number) => Effect.Effect<Health>
    readonly add: (member: Readonly<Record<string, number | string>>) => Effect.Effect<Health>
    readonly promote: (id: number) => Effect.Effect<Health>
    /** POST /members/replace?old=X&id=N&host=...: the new node added and caught up, then X removed. */
    readonly replace: (old: number, member: Readonly<Record<string, number | string>>) => Effect.Effect<Health>
  }
}) =>
  Effect.gen(function*() {
    // Requests run with this service's context: its logger above all.
    const context = yield* Effect.context<never>()
    const run = Effect.runPromiseWith(context)
    const logBad = (e: AdminBadRequest) => Effect.runForkWith(context)(Effect.logWarning("admin: bad request closed", e))
    const handle = (req: IncomingMessage, res: ServerResponse) => {
      const path = (req.url ?? "/").split("?")[0]
      const reply = (code: number, body: unknown) => {
        res.writeHead(code, { "content-type": "application/json" })
        res.end(JSON.stringify(body))
      }
      // Nothing here takes a body: one announced (maybe never sent) closes the connection.
      const length = req.headers["content-length"]
      if ((length !== undefined && length !== "0") || req.headers["transfer-encoding"] !== undefined) {
        logBad(new AdminBadRequest({ remote: `${req.socket.remoteAddress}:${req.socket.remotePort}`, cause: "a request body" }))
        res.writeHead(400, { "content-type": "application/json", connection: "close" })
        res.end(JSON.stringify({ error: "requests take no body" }), () => req.socket.destroy())
        return
      }
      // Health probes: open to anyone who can reach the port, any of the methods checkers use.
      const probe = path === undefined ? undefined : options.probes?.[path]
      if (probe !== undefined && (req.method === "GET" || req.method === "HEAD" || req.method === "OPTIONS")) {
        const query = new URL(req.url ?? "/", "http://admin").searchParams
        return void run(probe(query)).then((h) => reply(h.ok ? 200 : 503, h.body), (e) => reply(500, { error: String(e) }))
      }
      // Every call that changes something, and the copy of the database, needs the admin token.
      const changes = req.method === "POST" || req.method === "DELETE" || path === "/backup"
      const view = path === undefined ? undefined : options.views?.[path]
      if (changes || ((path === "/status" || view !== undefined) && options.openStatus === false)) {
        const refusal = tokenRefusal(options.token, req.headers.authorization)
        if (refusal !== undefined) {
          res.writeHead(401, { "content-type": "application/json", "www-authenticate": "Bearer" })
          return void res.end(JSON.stringify({ error: refusal }))
        }
      }
      if (req.method === "POST" && path === "/rebuild" && options.rebuild !== undefined) {
        if (!isLoopback(req.socket.remoteAddress)) return reply(403, { error: "POST /rebuild is taken from this machine only (loopback)" })
        return void run(options.rebuild).then((h) => reply(h.ok ? 202 : 409, h.body), (e) => reply(500, { error: String(e) }))
      }
      const remote = req.socket.remoteAddress ?? ""
      const fromMember = () => isLoopback(remote) || (options.isPeer?.(remote) ?? false)
      if (req.method === "POST" && path === "/switchover" && options.switchover !== undefined) {
        if (!fromMember()) return reply(403, { error: "POST /switchover is taken from this cluster's members only" })
        const to = new URL(req.url ?? "/", "http://admin").searchParams.get("to")
        if (to !== null && !/^[1-9][0-9]{0,9}$/.test(to)) return reply(400, { error: `to: not a node id: ${to.slice(0, 20)}` })
        return void run(options.switchover.run(to === null ? undefined : Number(to))).then(
          (h) => reply(h.ok ? 200 : 409, h.body),
          (e) => reply(500, { error: String(e) })
        )
      }
      if (req.method === "POST" && path === "/users" && options.users !== undefined) {
        if (!fromMember()) return reply(403, { error: "POST /users is taken from this cluster's members only" })
        const query = new URL(req.url ?? "/", "http://admin").searchParams
        return void run(options.users.add(query)).then((h) => reply(h.ok ? 200 : 409, h.body), (e) => reply(500, { error: String(e) }))
      }
      const members = options.members
      const memberPath = /^\/members(?:\/([1-9][0-9]{0,9})(\/voter)?|\/(replace))?$/.exec(path ?? "")
      if (members !== undefined && memberPath !== null && (req.method === "POST" || req.method === "DELETE")) {
        if (!fromMember()) return reply(403, { error: "/members is taken from this cluster's members only" })
        const answer = (h: Effect.Effect<Health>) => void run(h).then((r) => reply(r.ok ? 200 : 409, r.body), (e) => reply(500, { error: String(e) }))
        const [, id, voter, replace] = memberPath
        if (req.method === "DELETE" && id !== undefined && voter === undefined) return answer(members.remove(Number(id)))
        if (req.method === "POST" && id !== undefined && voter !== undefined) return answer(members.promote(Number(id)))
        if (req.method === "POST" && id === undefined) {
          const query = new URL(req.url ?? "/", "http://admin").searchParams
          const fields: Record<string, number | string> = {}
          for (const key of ["old", "id", "host", "port", "adminPort", "rwPort", "roPort", "forwardRwPort", "forwardRoPort"]) {
            const v = query.get(key)
            if (v === null) continue
            if (key === "host") fields[key] = v.slice(0, 255)
            else if (/^[0-9]{1,10}$/.test(v)) fields[key] = Number(v)
            else return reply(400, { error: `${key}: not a number` })
          }
          if (replace !== undefined) {
            const { old, ...member } = fields
            if (typeof old !== "number") return reply(400, { error: "old: the node to replace is needed" })
            return answer(members.replace(old, member))
          }
          return answer(members.add(fields))
        }
        return reply(405, { error: "method not allowed" })
      }
      if (req.method !== "GET" && req.method !== "HEAD") return reply(405, { error: "method not allowed" })
      // GET only: a HEAD would start a whole copy for nothing.
      if (path === "/backup" && options.backup !== undefined && req.method === "GET") {
        if (!fromMember()) {
          return reply(403, { error: "GET /backup is taken from this cluster's members only" })
        }
        // With peer TLS the copy goes only to a member proving it with its certificate, encrypted.
        if (options.tls !== undefined && PeerTls.peerNodeId(req.socket as TLSSocket) === undefined) {
          return reply(403, { error: "GET /backup is served over mutual TLS only (a node certificate of the cluster's CA)" })
        }
        return void offerStream(options.backup.offer, res, reply)
      }
      if (view !== undefined) {
        return void run(view).then((v) => {
          res.writeHead(200, { "content-type": v.contentType, "cache-control": "no-store" })
          res.end(v.body)
        }, (e) => reply(500, { error: String(e) }))
      }
      if (path === "/" && options.page !== undefined) {
        // The page carries its own policy (its script and style by hash, requests to itself
        // only); a header is needed for what a <meta> policy cannot say: no framing.
        res.writeHead(200, {
          "content-type": "text/html; charset=utf-8",
          "cache-control": "no-store",
          "content-security-policy": "frame-ancestors 'none'",
          "x-content-type-options": "nosniff"
        })
        return void res.end(options.page)
      }
      if (path !== "/status") {
        return reply(404, { error: "not found", paths: ["/status", ...(options.page !== undefined ? ["/"] : []), ...Object.keys(options.views ?? {}), ...Object.keys(options.probes ?? {})] })
      }
      run(options.status).then((s) => reply(200, s), (e) => reply(500, { error: String(e) }))
    }
    // One port, two protocols: a connection whose first byte opens a TLS handshake (0x16)
    // goes to the HTTPS server (peer TLS configured), any other to the plain one.
    const plain = createServer(handle)
    const secure = options.tls === undefined
      ? undefined
      : createHttpsServer({ ...PeerTls.serverOptions(options.tls), requestCert: true, rejectUnauthorized: false }, handle)
    const servers = secure === undefined ? [plain] : [plain, secure]
    /** Streams an offer; its scope closes once the response is done, whichever way. */
    const offerStream = async (
      offer: Effect.Effect<StreamOffer, OfferRefused, Scope.Scope>,
      res: ServerResponse,
      reply: (code: number, body: unknown) => void
    ) => {
      const scope = Effect.runSync(Scope.make())
      const close = () => void run(Scope.close(scope, Exit.void))
      const exit = await Effect.runPromiseExitWith(context)(Scope.provide(offer, scope))
      if (exit._tag === "Failure") {
        close()
        const refused = exit.cause.reasons.find((r) => r._tag === "Fail")
        return reply(refused !== undefined ? 409 : 500, { error: refused !== undefined ? (refused.error as OfferRefused).message : String(exit.cause) })
      }
      const { headers, body } = exit.value
      res.writeHead(200, { "content-type": "application/octet-stream", ...headers })
      res.on("close", close)
      // A copy that fails half-way ends the connection without the last chunk: never a short copy taken for whole.
      body.on("error", (e) => {
        Effect.runForkWith(context)(Effect.logWarning("admin: GET /backup failed while streaming", e))
        res.destroy(e)
      })
      body.pipe(res)
    }

    for (const server of servers) {
      server.on("clientError", (cause, socket) => {
        const peer = socket as Socket
        logBad(new AdminBadRequest({ remote: `${peer.remoteAddress}:${peer.remotePort}`, cause }))
        socket.destroy()
      })
      server.headersTimeout = 5_000
      server.requestTimeout = 10_000
    }
    secure?.on("tlsClientError", (cause, socket) => {
      logBad(new AdminBadRequest({ remote: `${socket.remoteAddress}:${socket.remotePort}`, cause }))
      socket.destroy()
    })
    const sockets = new Set<Socket>()
    const server = createNetServer((socket) => {
      sockets.add(socket)
      socket.once("close", () => sockets.delete(socket))
      socket.on("error", () => socket.destroy())
      // A connection that never sends a byte is dropped like one that never sends its headers.
      const idle = setTimeout(() => socket.destroy(), 5_000)
      socket.once("data", (first: Buffer) => {
        clearTimeout(idle)
        // Paused, the byte put back: TLS reads it from the socket itself; HTTP needs the stream flowing again.
        socket.pause()
        socket.unshift(first)
        if (secure !== undefined && first[0] === 0x16) {
          secure.emit("connection", socket)
        } else {
          plain.emit("connection", socket)
          socket.resume()
        }
      })
    })
    yield* Effect.acquireRelease(
      Effect.callback<void, AdminListenError>((resume) => {
        server.once("error", (cause) => resume(Effect.fail(new AdminListenError({ host: options.host, port: options.port, cause }))))
        server.listen(options.port, options.host, () => resume(Effect.void))
      }),
      () => Effect.callback<void>((resume) => {
        server.close(() => resume(Effect.void))
        for (const s of servers) s.closeAllConnections()
        for (const socket of sockets) socket.destroy()
      })
    )
    const address = server.address()
    return { port: typeof address === "object" && address !== null ? address.port : options.port }
  })
