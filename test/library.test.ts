import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { execFile } from "node:child_process"
import { chmodSync, cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { freePort } from "../src/testing/LocalCluster.js"

/** Runs a command to completion; fails with its output when it exits non-zero. */
const exec = (file: string, args: ReadonlyArray<string>, options: { readonly cwd: string; readonly env?: NodeJS.ProcessEnv }) =>
  Effect.callback<string, Error>((resume) => {
    const child = execFile(file, [...args], { cwd: options.cwd, env: { ...process.env, ...options.env }, maxBuffer: 64 * 1024 * 1024 },
      (error, stdout, stderr) => resume(error ? Effect.fail(new Error(`${file} ${args.join(" ")}: ${error.message}\n${stdout}\n${stderr}`)) : Effect.succeed(stdout)))
    return Effect.sync(() => child.kill("SIGKILL"))
  })

/**
 * The package as a user gets it: packed, installed in a fresh app, type-checked against its
 * declarations, and the example app run (it embeds a node with its own mariadbd and talks
 * to it through the cluster-aware client).
 */
describe("phxmaria as a library", () => {
  it.live("npm pack, install into the example app, type-check it and run it against a real node", () =>
    Effect.gen(function*() {
      const work = yield* Effect.acquireRelease(
        // 0711: a mariadbd run as `mysql` (tests as root) must pass through.
        Effect.sync(() => { const d = mkdtempSync(join(tmpdir(), "phxmaria-lib-")); chmodSync(d, 0o711); return d }),
        (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
      )
      const root = process.cwd()
      const packed = yield* exec("npm", ["pack", "--silent", "--pack-destination", work], { cwd: root })
      const tarball = join(work, packed.trim().split("\n").pop()!)
      const app = join(work, "app")
      cpSync(join(root, "examples", "embedded-node"), app, { recursive: true, filter: (src) => !/node_modules|dist/.test(src.slice(root.length)) })
      const manifest = JSON.parse(readFileSync(join(app, "package.json"), "utf8"))
      manifest.dependencies.phxmaria = `file:${tarball}`
      writeFileSync(join(app, "package.json"), JSON.stringify(manifest, null, 2))
      // Everything it needs is in npm's cache after the project's own install.
      yield* exec("npm", ["install", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error"], { cwd: app })
      yield* exec(process.execPath, [join(app, "node_modules", "typescript", "bin", "tsc"), "-p", "tsconfig.json"], { cwd: app })

      const ports = yield* Effect.forEach(Array.from({ length: 8 }), () => freePort())
      const out = yield* exec(process.execPath, ["dist/main.js"], {
        cwd: app,
        env: { DATA_DIR: join(work, "data"), PORTS: ports.join(",") }
      }).pipe(Effect.timeout("90 seconds"))
      const done = out.split("\n").find((l) => l.startsWith("{\"event\":\"example-done\""))
      expect(done, out.slice(-3_000)).toBeDefined()
      expect(JSON.parse(done!)).toEqual({
        event: "example-done",
        role: "master",
        rows: [{ id: 1, item: "big teapot" }, { id: 2, item: "kettle" }]
      })
    }), { timeout: 240_000 })
})
