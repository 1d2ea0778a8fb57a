/**
 * A TCP listener in a Scope, shared by the services that accept connections: one fiber per
 * accepted socket; closing the scope closes the server and destroys every socket.
 */
import { Effect, FiberSet, type Scope } from "effect"
import * as net from "node:net"

export interface TcpListener {
  /** The address actually bound (port 0 resolved). */
  readonly address: { readonly host: string; readonly port: number }
  /** Sockets currently open. */
  readonly connections: Effect.Effect<number>
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
        const server = net.createServer({ noDelay: true })
        const onListenError = (cause: Error) => resume(Effect.fail(options.listenError(cause)))
        server.once("error", onListenError)
        server.on("connection", (socket) => {
          sockets.add(socket)
          socket.once("close", () => sockets.delete(socket))
          runFork(options.onSocket(socket))
        })
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
