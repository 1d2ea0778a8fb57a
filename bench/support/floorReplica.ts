/**
 * The two processes of bench/floor.ts's minimal durable design, each run as its own
 * process (`node floorReplica.js follower PORT` / `node floorReplica.js acker DBPORT FOLLOWERPORT`):
 * - follower: takes length-prefixed transactions over TCP, writes each with one pwrite on a
 *   file opened O_DSYNC (on disk when it returns) and answers one byte per transaction;
 * - acker: the master's only semi-sync replica (this project's BinlogCapture), sends every
 *   transaction to the follower and ACKs it to MariaDB once the follower answered.
 * Nothing else: no log, no state machine, no consensus. Prints "ready" when it serves.
 */
import { NodeRuntime } from "@effect/platform-node"
import { Effect, Stream } from "effect"
import * as fs from "node:fs"
import * as net from "node:net"
import { join } from "node:path"
import { tmpdir } from "node:os"
import * as BinlogCapture from "../../src/services/binlog/BinlogCapture.js"
import { REPL_PASSWORD, REPL_USER } from "../../test/support/replication.js"

const FILE_BYTES = 64 << 20

const follower = (port: number) => {
  const dir = fs.mkdtempSync(join(tmpdir(), "phxmaria-floor-"))
  const file = join(dir, "log")
  // Zero-filled first: a write then covers existing blocks (one flush, no journal commit), as PaxosStorage does.
  fs.writeFileSync(file, Buffer.alloc(FILE_BYTES))
  const synced = fs.openSync(file, "r")
  fs.fsyncSync(synced)
  fs.closeSync(synced)
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_DSYNC)
  let at = 0
  const server = net.createServer((socket) => {
    socket.setNoDelay(true)
    let buffered = Buffer.alloc(0)
    socket.on("error", () => socket.destroy())
    socket.on("data", (chunk) => {
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk])
      let written = 0
      while (buffered.length >= 4 && buffered.length >= 4 + buffered.readUInt32LE(0)) {
        const length = buffered.readUInt32LE(0)
        if (at + length > FILE_BYTES) at = 0
        fs.writeSync(fd, buffered, 4, length, at)
        at += length
        buffered = buffered.subarray(4 + length)
        written++
      }
      if (written > 0) socket.write(Buffer.alloc(written, 1))
    })
  })
  const stop = () => {
    server.close()
    fs.rmSync(dir, { recursive: true, force: true })
    process.exit(0)
  }
  process.on("SIGTERM", stop)
  process.on("SIGINT", stop)
  server.listen(port, "127.0.0.1", () => process.stdout.write("ready\n"))
}

const acker = (dbPort: number, followerPort: number) =>
  NodeRuntime.runMain(Effect.scoped(Effect.gen(function*() {
    const socket = net.connect(followerPort, "127.0.0.1")
    socket.setNoDelay(true)
    yield* Effect.callback<void>((resume) => void socket.once("connect", () => resume(Effect.void)))
    const capture = yield* BinlogCapture.make({ host: "127.0.0.1", port: dbPort, user: REPL_USER, password: REPL_PASSWORD, serverId: 999, startAfter: null })
    /** Sent to the follower, not yet answered, in order. */
    const waiting: Array<BinlogCapture.CapturedTxn> = []
    socket.on("data", (answers) => {
      for (let i = 0; i < answers.length; i++) {
        const t = waiting.shift()
        if (t?.needAck === true) Effect.runSync(capture.ack(t.file, t.endPos))
      }
    })
    socket.on("close", () => process.exit(1))
    process.stdout.write("ready\n")
    yield* capture.transactions.pipe(Stream.runForEach((t) =>
      Effect.sync(() => {
        const head = Buffer.alloc(4)
        head.writeUInt32LE(t.events.reduce((n, e) => n + e.length, 0))
        waiting.push(t)
        socket.cork()
        socket.write(head)
        for (const e of t.events) socket.write(e)
        socket.uncork()
      })
    ))
  })), { disableErrorReporting: false })

const [mode, a, b] = process.argv.slice(2)
if (mode === "follower") follower(Number(a))
else if (mode === "acker") acker(Number(a), Number(b))
else {
  process.stderr.write("usage: floorReplica.js follower PORT | acker DBPORT FOLLOWERPORT\n")
  process.exit(2)
}
