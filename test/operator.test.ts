/**
 * What an operator uses around a running cluster (issue 16): health probes, /metrics,
 * `status` (JSON, exit codes, node ids), `check` and `user add`, on real agents and
 * mariadbd.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { execFile, spawn } from "node:child_process"
import { writeFileSync } from "node:fs"
import { join } from "node:path"
import mysql from "mysql2/promise"
import * as LocalCluster from "../src/testing/LocalCluster.js"
import { adminQuery, waitConverged, waitForMaster } from "./support/dbCluster.js"
import { parsePrometheus } from "./support/prometheus.js"

/** The CLI's exit code, stdout and stderr apart. */
const cli = (args: ReadonlyArray<string>) =>
  Effect.callback<{ readonly code: number; readonly stdout: string; readonly stderr: string }>((resume) => {
    execFile(process.execPath, [join(process.cwd(), "dist", "main.js"), ...args], { timeout: 90_000 }, (error, stdout, stderr) =>
      resume(Effect.succeed({ code: error === null ? 0 : typeof error.code === "number" ? error.code : 1, stdout, stderr })))
  })

/** One HTTP answer from a node's admin port. */
const http = (n: LocalCluster.LocalNode, path: string, method = "GET") =>
  Effect.promise(() =>
    fetch(`http://${n.host}:${n.adminPort}${path}`, { method }).then(async (r) => ({ status: r.status, type: r.headers.get("content-type") ?? "", text: await r.text() }))
  )

const metricsOf = (n: LocalCluster.LocalNode) => Effect.map(http(n, "/metrics"), (r) => {
  expect(r.status).toBe(200)
  expect(r.type).toMatch(/^text\/plain; version=0\.0\.4/)
  return parsePrometheus(r.text)
})

const login = (port: number, user: string, password: string) =>
  Effect.promise(() =>
    mysql.createConnection({ host: "127.0.0.1", port, user, password, connectTimeout: 5_000 }).then(
      async (c) => {
        const [rows] = await c.query("SELECT CURRENT_USER() AS u")
        await c.end()
        return (rows as Array<{ u: string }>)[0]!.u
      },
      (e: Error) => `error: ${e.message}`
    )
  )

describe("operator's tools", () => {
  it.live("health probes, /metrics, status --json with its exit codes, check, and user add through the log", () =>
    Effect.gen(function*() {
      const c = yield* LocalCluster.make({ nodes: 3, database: true })
      const master = yield* waitForMaster(c, "a master")
      const replicas = c.nodes.filter((n) => n.nodeId !== master.nodeId)
      yield* waitConverged(c)
      const admins = c.nodes.map((n) => `${n.host}:${n.adminPort}`).join(",")

      // Probes: the master alone is primary; replicas pass /replica; every node is healthy and ready.
      expect((yield* http(master, "/primary")).status).toBe(200)
      expect((yield* http(master, "/replica")).status).toBe(503)
      for (const r of replicas) {
        const primary = yield* http(r, "/primary")
        expect(primary.status).toBe(503)
        expect(JSON.parse(primary.text)).toMatchObject({ nodeId: r.nodeId, role: "replica", master: master.nodeId, reason: expect.stringMatching(/not the master/) })
        expect((yield* http(r, "/replica?lag=0&lagSeconds=30")).status).toBe(200)
        expect((yield* http(r, "/replica?lag=ten")).status).toBe(503)
        expect((yield* http(r, "/read-only")).status).toBe(200)
      }
      for (const n of c.nodes) {
        expect((yield* http(n, "/health")).status).toBe(200)
        expect((yield* http(n, "/ready")).status).toBe(200)
        // What load balancers send: HAProxy's httpchk (OPTIONS) and HEAD.
        expect((yield* http(n, "/health", "OPTIONS")).status).toBe(200)
        expect((yield* http(n, "/health", "HEAD")).status).toBe(200)
        expect((yield* http(n, "/health", "POST")).status).toBe(401)
      }

      // user add: the password file never travels (its hash does); the user is on every node through the log.
      const pwFile = join(c.dir, "app.password")
      writeFileSync(pwFile, "Sh0p-secret\n", { mode: 0o600 })
      const token = ["--token", c.adminToken]
      const added = yield* cli(["user", "add", "--admin", admins, ...token, "--name", "shop", "--host", "%", "--password-file", pwFile, "--grant", "ALL ON shop.*", "--grant", "PROCESS ON *.*"])
      expect(added.code, added.stdout + added.stderr).toBe(0)
      expect(added.stdout).toMatch(/'shop'@'%' with 2 grant\(s\), on every node/)
      for (const n of c.nodes) {
        expect(yield* adminQuery<{ g: string }>(n, "SHOW GRANTS FOR 'shop'@'%'").pipe(Effect.map((rows) => rows.map((r) => Object.values(r)[0]).join("\n"))))
          .toMatch(/GRANT ALL PRIVILEGES ON `shop`\.\* TO `shop`@`%`/)
      }
      // It logs in through a replica's RW port (relayed to the master) and writes.
      expect(yield* login(replicas[0]!.rwPort!, "shop", "Sh0p-secret")).toBe("shop@%")
      const refused = yield* cli(["user", "add", "--admin", admins, ...token, "--name", "boss", "--password-file", pwFile, "--grant", "ALL ON *.*"])
      expect(refused.code).toBe(1)
      expect(refused.stderr).toMatch(/READ ONLY ADMIN/)
      const again = yield* cli(["user", "add", "--admin", admins, ...token, "--name", "shop", "--password-file", pwFile])
      expect(again.code).toBe(1)
      expect(again.stderr).toMatch(/--update/)
      writeFileSync(pwFile, "N3w-secret\n")
      const updated = yield* cli(["user", "add", "--admin", admins, ...token, "--name", "shop", "--password-file", pwFile, "--update"])
      expect(updated.code, updated.stderr).toBe(0)
      expect(yield* login(master.rwPort!, "shop", "N3w-secret")).toBe("shop@%")
      const noToken = yield* cli(["user", "add", "--admin", admins, "--token", "x".repeat(24), "--name", "x", "--password-file", pwFile])
      expect(noToken.code).toBe(1)

      // Writes show in the master's commit metrics; a replica has a lag series, the master holds the lease.
      const before = (yield* metricsOf(master)).value("phxmaria_commits_total")
      const conn = yield* Effect.promise(() => mysql.createConnection({ host: "127.0.0.1", port: master.rwPort!, user: "shop", password: "N3w-secret" }))
      yield* Effect.promise(() => conn.query("CREATE DATABASE IF NOT EXISTS shop"))
      yield* Effect.promise(() => conn.query("CREATE TABLE shop.t (id INT PRIMARY KEY)"))
      for (let i = 0; i < 10; i++) yield* Effect.promise(() => conn.query("INSERT INTO shop.t VALUES (?)", [i]))
      yield* Effect.promise(() => conn.end())
      const m = yield* metricsOf(master)
      expect(m.value("phxmaria_commits_total")).toBeGreaterThanOrEqual(before + 12)
      expect(m.value("phxmaria_commit_stage_seconds_count", { stage: "total" })).toBe(m.value("phxmaria_commits_total"))
      expect(m.value("phxmaria_lease_held")).toBe(1)
      expect(m.value("phxmaria_database_role", { role: "master" })).toBe(1)
      expect(m.value("phxmaria_proxy_connections_accepted_total", { listener: "rw" })).toBeGreaterThan(0)
      expect(m.value("phxmaria_proxy_bytes_total", { listener: "rw", direction: "in" })).toBeGreaterThan(0)
      expect(m.value("phxmaria_store_bytes", { store: "paxos_log" })).toBeGreaterThan(0)
      expect(m.value("phxmaria_store_bytes", { store: "mariadb_binlog" })).toBeGreaterThan(0)
      expect(m.value("phxmaria_paxos_batches_total")).toBeGreaterThan(0)
      const r0 = yield* metricsOf(replicas[0]!)
      expect(r0.value("phxmaria_lease_held")).toBe(0)
      expect(r0.value("phxmaria_master_node")).toBe(master.nodeId)
      expect(r0.all("phxmaria_replica_lag_transactions")).toHaveLength(1)

      // status: healthy (0), with the nodes' own ids and units in the header.
      const healthy = yield* cli(["status", "--admin", admins])
      expect(healthy.code, healthy.stdout).toBe(0)
      expect(healthy.stdout).toMatch(/lease \(ms\).*lag \(txns\)\s+lag \(s\)/)
      expect(healthy.stdout).toMatch(/health: healthy: master node \d/)
      // --watch redraws in place until Ctrl-C, which ends it cleanly.
      const watched = yield* Effect.promise(() =>
        new Promise<{ readonly frames: number; readonly code: number | null }>((resolve) => {
          const child = spawn(process.execPath, [join(process.cwd(), "dist", "main.js"), "status", "--watch", "--interval", "1", "--admin", admins])
          let out = ""
          const frames = () => out.split("\x1b[H\x1b[2J").length - 1
          child.stdout.on("data", (d: Buffer) => {
            out += d.toString()
            if (frames() >= 2) child.kill("SIGINT")
          })
          const limit = setTimeout(() => child.kill("SIGKILL"), 30_000)
          child.once("exit", (code) => {
            clearTimeout(limit)
            resolve({ frames: frames(), code })
          })
        })
      )
      expect(watched.frames).toBeGreaterThanOrEqual(2)
      expect(watched.code).toBe(0)
      const json = yield* cli(["status", "--json", "--admin", admins])
      const parsed = JSON.parse(json.stdout) as { health: { code: number }; nodes: Array<{ nodeId: number; status?: { role: string } }> }
      expect(parsed.health.code).toBe(0)
      expect(parsed.nodes.map((x) => x.nodeId)).toEqual(c.nodes.map((n) => n.nodeId))

      // One replica's agent stopped: degraded (1), the silent one named by the others; then no majority: no master (2).
      const [r1, r2] = replicas as [LocalCluster.LocalNode, LocalCluster.LocalNode]
      process.kill(r2.pid()!, "SIGSTOP")
      yield* Effect.gen(function*() {
        const degraded = yield* cli(["status", "--json", "--admin", admins])
        expect(degraded.code).toBe(1)
        const d = JSON.parse(degraded.stdout) as { health: { problems: Array<string> }; nodes: Array<{ nodeId: number; error?: string }> }
        expect(d.nodes.find((x) => x.nodeId === r2.nodeId)?.error).toBeDefined()
        expect(d.health.problems.join("\n")).toMatch(new RegExp(`node ${r2.nodeId}: DOWN`))
        const checkDown = yield* cli(["check", "--admin", `${r2.host}:${r2.adminPort}`, "--probe", "live"])
        expect(checkDown.code).toBe(1)
        const checkUp = yield* cli(["check", "--admin", `${master.host}:${master.adminPort}`, "--probe", "primary"])
        expect(checkUp.code, checkUp.stderr).toBe(0)
        process.kill(r1.pid()!, "SIGSTOP")
        yield* LocalCluster.waitFor("status to say no master (exit 2)", Effect.map(cli(["status", "--admin", admins]), (r) => r.code === 2 && /no master/.test(r.stdout)), 30_000)
        expect((yield* http(master, "/primary")).status).toBe(503)
        expect((yield* http(master, "/ready")).status).toBe(503)
        // Its agent answers (503 with the reason): "live" (the systemd unit's ready check) says yes, "ready" no.
        const live = yield* cli(["check", "--admin", `${master.host}:${master.adminPort}`, "--probe", "live", "--wait", "5"])
        expect(live.code, live.stdout + live.stderr).toBe(0)
        expect((yield* cli(["check", "--admin", `${master.host}:${master.adminPort}`, "--probe", "ready"])).code).toBe(1)
      }).pipe(Effect.ensuring(Effect.sync(() => {
        for (const n of [r1, r2]) process.kill(n.pid()!, "SIGCONT")
      })))
      yield* waitForMaster(c, "a master again")
      yield* LocalCluster.waitFor("status to be healthy again", Effect.map(cli(["status", "--admin", admins]), (r) => r.code === 0), 60_000)
    }).pipe(Effect.scoped), { timeout: 300_000 })
})
