/**
 * One transport socket as frames (domain/wire/frame.ts): {@link Connection} reads and
 * writes in socket callbacks, coalesces writes and bounds what it buffers; fibers await
 * its frames and its close with the helpers below. {@link decodeFrameWith} checks a
 * frame's payload against a Schema.
 */
import type * as net from "node:net"
import { Effect, Result, type Schema, type Scope } from "effect"
import { decodePayload, FrameDecoder, FrameTruncated } from "../../domain/wire/frame.js"
import type { Scattered } from "../../domain/wire/scatter.js"
import { writeAll } from "../net/writeAll.js"
import {
  TransportClosed,
  type TransportConnectionError,
  TransportFrameError,
  TransportSchemaError,
  TransportSocketError
} from "./TransportErrors.js"

// ---------------------------------------------------------------------------
// Connection: one socket, framed, with coalesced writes
// ---------------------------------------------------------------------------

/** Returns an error to close the connection with, or undefined to go on. */
export type Receiver = (payload: Uint8Array) => TransportConnectionError | undefined

/**
 * Callback-level wrapper of a net.Socket. Reading and writing happen in
 * socket callbacks (no fiber hop per chunk or per frame, which matters at
 * thousands of frames/s); fibers only await its lifecycle via
 * {@link awaitClosed} / {@link receiveOne}. Handlers are attached in the
 * constructor so a socket 'error' can never go unhandled (that would crash
 * the process).
 */
export class Connection {
  private readonly decoder: FrameDecoder
  private receiver: Receiver | undefined = undefined
  /** Frames that arrived while no receiver was set; the socket is paused meanwhile. */
  private readonly stash: Array<Uint8Array> = []
  private pending: Array<Uint8Array | Scattered> = []
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
   * larger than the bound can still be sent. A frame in ranges (scatter.ts) goes out as
   * they are, in the same corked write.
   */
  write(frame: Uint8Array | Scattered): boolean {
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
    writeAll(this.socket, frames.flatMap((frame) => (frame instanceof Uint8Array ? [frame] : frame.parts)))
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
export const awaitClosed = (conn: Connection): Effect.Effect<never, TransportConnectionError> =>
  Effect.callback<never, TransportConnectionError>((resume) => {
    const closed = conn.closed
    if (closed !== undefined) return resume(Effect.fail(closed))
    const remove = conn.onClose((error) => resume(Effect.fail(error)))
    return Effect.sync(remove)
  })

/** The next frame on a connection that has no receiver installed. */
export const receiveOne = (conn: Connection): Effect.Effect<Uint8Array, TransportConnectionError> =>
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
export const acquireConnection = (conn: Connection): Effect.Effect<Connection, never, Scope.Scope> =>
  Effect.acquireRelease(Effect.succeed(conn), (c) =>
    Effect.sync(() => c.close(new TransportClosed({ remote: c.remote }))))

/** Decodes a frame against a Schema; both failure kinds are connection errors. */
export const decodeFrameWith = <A>(decode: (u: unknown) => Result.Result<A, Schema.SchemaError>, remote: string) =>
(payload: Uint8Array): Result.Result<A, TransportFrameError | TransportSchemaError> => {
  const raw = decodePayload(payload)
  if (Result.isFailure(raw)) return Result.fail(new TransportFrameError({ remote, cause: raw.failure }))
  const decoded = decode(raw.success)
  if (Result.isFailure(decoded)) return Result.fail(new TransportSchemaError({ remote, cause: decoded.failure }))
  return Result.succeed(decoded.success)
}
