/** haproxy (an OS package, see scripts/setup.sh) in TCP mode as the reference relay of the benchmarks. */
import { Effect, Schedule } from "effect"
import { spawn } from "node:child_process"
import * as net from "node:net"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { freePort } from "../../src/testing/LocalCluster.js"

/** Starts haproxy relaying a free loopback port to `backendPort` (with a PROXY v1 header when asked); stopped with the scope. */
export const haproxy = (backendPort: number, options: { readonly sendProxy?: boolean } = {}) =>
  Effect.gen(function*() {
    const dir = yield* Effect.acquireRelease(
      Effect.sync(() => mkdtempSync(join(tmpdir(), "phxmaria-haproxy-"))),
      (d) => Effect.sync(() => rmSync(d, { recursive: true, force: true }))
    )
    const port = yield* freePort()
    writeFileSync(join(dir, "haproxy.cfg"), [
      "global",
      "  maxconn 4096",
      "defaults",
      "  mode tcp",
      "  timeout connect 5s",
      "  timeout client 1h",
      "  timeout server 1h",
      "listen mysql",
      `  bind 127.0.0.1:${port}`,
      `  server db 127.0.0.1:${backendPort}${options.sendProxy === true ? " send-proxy" : ""}`
    ].join("\n") + "\n")
    yield* Effect.acquireRelease(
      Effect.sync(() => spawn("haproxy", ["-f", join(dir, "haproxy.cfg"), "-db"], { stdio: "ignore" })),
      (child) => Effect.sync(() => child.kill("SIGKILL"))
    )
    // Ready once it accepts a connection (bounded: 5 s).
    yield* Effect.callback<void, Error>((resume) => {
      const socket = net.connect({ host: "127.0.0.1", port }, () => {
        socket.destroy()
        resume(Effect.void)
      })
      socket.on("error", (e) => resume(Effect.fail(e)))
    }).pipe(Effect.retry({ schedule: Schedule.spaced("50 millis"), times: 100 }))
    return port
  })
