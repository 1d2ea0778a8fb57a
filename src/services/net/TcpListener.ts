/**
 * A TCP listener in a Scope, shared by the services that accept connections: one fiber per
 * accepted socket; closing the scope closes the server and destroys every socket.
 */
import { Data, Effect, FiberSet, type Scope } from "effect"
import * as net from "node:net"
import * as tls from "node:tls"

export interface TcpListener {
  /** The address actually bound (port 0 resolved). */
  readonly address: { readonly host: string; readonly port: number }
  /** Sockets currently open. */
  readonly connections: Effect.Effect<number>
}

/** A dialer that did not complete mutual TLS (no certificate, another CA, not TLS at all). */
export class TlsHandshakeRefused extends Data.TaggedError("TlsHandshakeRefused")<{ readonly remote: string; readonly reason: string }> {
  override get message() {
    return `TLS handshake with ${this.remote} refused: ${this.reason}`
  }
}

/** "host:port" of a socket's peer, for logs and errors. */
export const remoteOf = (socket: net.Socket): string => `${socket.remoteAddress ?? "?"}:${socket.remotePort ?? "?"}`

export const listen = <E>(options: {
  readonly host: string
  readonly port: number
  /** Prefix of log lines, e.g. "transport". */
  readonly component: string
  readonly listenError: (cause: Error) => E
  /**
   * Called synchronously for every accepted socket (so that it can attach the socket's
   * error handler at once); the effect it returns runs in a fiber of its own.
   */
  readonly onSocket: (socket: net.Socket) => Effect.Effect<void>
  /**
   * Serve TLS (mutual, when the options ask for client certificates): `onSocket` gets only
   * connections whose handshake succeeded; a failed one is logged and destroyed before any
   * of its bytes reach the service.
   */
  readonly tls?: tls.TlsOptions | undefined
}): Effect.Effect<TcpListener, E, Scope.Scope> =>
  Effect.gen(function*() {
    // Every accepted socket is tracked so closing the server cannot wait on a connection
    // whose fiber never started.
    const sockets = new Set<net.Socket>()
    // Created before the server so accept errors can be logged; its fibers are interrupted
    // after the server (and its sockets) closed.
    const runFork = yield* FiberSet.makeRuntime<never>()
    const server = yield* Effect.acquireRelease(
      Effect.callback<net.Server, E>((resume) => {
        const secure = options.tls
        const server: net.Server = secure === undefined ? net.createServer({ noDelay: true }) : tls.createServer(secure)
        const onListenError = (cause: Error) => resume(Effect.fail(options.listenError(cause)))
        server.once("error", onListenError)
        server.on("connection", (socket: net.Socket) => {
          sockets.add(socket)
          socket.once("close", () => sockets.delete(socket))
          if (secure === undefined) return runFork(options.onSocket(socket))
          socket.setNoDelay(true)
        })
        if (secure !== undefined) {
          server.on("secureConnection", (socket: tls.TLSSocket) => {
            sockets.add(socket)
            socket.once("close", () => sockets.delete(socket))
            runFork(options.onSocket(socket))
          })
          server.on("tlsClientError", (cause: Error, socket: tls.TLSSocket) => {
            socket.destroy()
            runFork(Effect.logWarning(`${options.component}: connection refused in the TLS handshake`, new TlsHandshakeRefused({ remote: remoteOf(socket), reason: cause.message })))
          })
        }
        server.listen({ host: options.host, port: options.port }, () => {
          server.off("error", onListenError)
          // Accept errors (e.g. EMFILE) must not crash the process; the server keeps listening.
          server.on("error", (cause) => {
            runFork(Effect.logWarning(`${options.component}: listener error`, options.listenError(cause)))
          })
          resume(Effect.succeed(server))
        })
        return Effect.sync(() => server.close())
      }),
      (server) =>
        Effect.callback<void>((resume) => {
          server.close(() => resume(Effect.void))
          for (const socket of sockets) socket.destroy()
        })
    )
    return {
      address: { host: options.host, port: (server.address() as net.AddressInfo).port },
      connections: Effect.sync(() => sockets.size)
    }
  })
