/**
 * docs/deployment.md followed on one machine: the systemd unit passes `systemd-analyze
 * verify`, and three nodes on three loopback addresses run from config files written from
 * the guide's template, started as the unit starts them (first with --bootstrap, logs on
 * stderr), checked as its ExecStartPost checks them, then the first user, status, and a
 * restart without the flag.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Scope } from "effect"
import { type ChildProcess, execFile, spawn } from "node:child_process"
import { chmodSync, chownSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join } from "node:path"
import mysql from "mysql2/promise"
import * as LocalCluster from "../src/testing/LocalCluster.js"
import { killStaleServer } from "../src/services/database/MariaDbProcess.js"
import { blockedFor, layoutOf } from "../src/services/database/MariaDbLayout.js"
import { managedDirOf } from "../src/services/database/LocalMariaDb.js"

const repo = process.cwd()
const mainJs = join(repo, "dist", "main.js")
const unitFile = join(repo, "deploy", "phxmaria@.service")

const run = (file: string, args: ReadonlyArray<string>, env: NodeJS.ProcessEnv = process.env) =>
  Effect.callback<{ readonly code: number; readonly stdout: string; readonly stderr: string }>((resume) => {
    execFile(file, [...args], { timeout: 120_000, env }, (error, stdout, stderr) =>
      resume(Effect.succeed({ code: error === null ? 0 : typeof error.code === "number" ? error.code : 1, stdout, stderr })))
  })
const cli = (...args: ReadonlyArray<string>) => run(process.execPath, [mainJs, ...args])

/** The guide's config template (docs/deployment.md, step 3) with this machine's addresses and ports. */
const nodeYaml = (o: {
  readonly nodeId: number
  readonly dataDir: string
  readonly etc: string
  readonly hosts: ReadonlyArray<string>
  readonly ports: { readonly peer: number; readonly admin: number; readonly rw: number; readonly ro: number; readonly fwdRw: number; readonly fwdRo: number }
  readonly mariadbPort: number
  readonly binlogServerPort: number
}) => {
  const p = o.ports
  return [
    "clusterId: prod",
    `nodeId: ${o.nodeId}`,
    `dataDir: ${o.dataDir}`,
    "members:",
    ...o.hosts.map((h, i) =>
      `  - { nodeId: ${i + 1}, host: ${h}, port: ${p.peer}, adminPort: ${p.admin}, rwPort: ${p.rw}, roPort: ${p.ro}, forwardRwPort: ${p.fwdRw}, forwardRoPort: ${p.fwdRo} }`),
    "admin:",
    `  tokenFile: ${o.etc}/admin-token`,
    "tls:",
    `  ca: ${o.etc}/tls/ca.crt`,
    `  cert: ${o.etc}/tls/node-${o.nodeId}.crt`,
    `  key: ${o.etc}/tls/node-${o.nodeId}.key`,
    "mariadb:",
    `  port: ${o.mariadbPort}`,
    `  binlogServerPort: ${o.binlogServerPort}`,
    `  ssl: { cert: ${o.etc}/tls/server.crt, key: ${o.etc}/tls/server.key }`,
    // The guide leaves these at their defaults (sized for a real machine); three nodes share this one.
    "  bufferPoolMb: 64",
    "  maxConnections: 200",
    "proxy: { maxConnections: 200 }",
    ""
  ].join("\n")
}

interface Agent {
  readonly child: ChildProcess
  readonly stdout: () => string
  readonly stderr: () => string
  readonly exited: Promise<number | null>
}

/** The uid/gid the unprivileged node runs as (the unit runs its own user, not root): `nobody`. */
const NOBODY = { name: "nobody", uid: 65534, gid: 65534 }

/**
 * The unit's ExecStart: the agent with its V8 and glibc settings (as `nobody` when `asNobody`,
 * with setpriv, which execs: the child is the agent), stopped (and its mariadbd) with the scope.
 */
const startAgent = (config: string, dataDir: string, flags: ReadonlyArray<string>, asNobody = false) =>
  Effect.acquireRelease(
    Effect.sync((): Agent => {
      const command = [process.execPath, "--max-semi-space-size=4", mainJs, "node", "--config", config, ...flags]
      const [file, ...args] = asNobody ? ["setpriv", `--reuid=${NOBODY.uid}`, `--regid=${NOBODY.gid}`, "--clear-groups", "--", ...command] : command
      const child = spawn(file!, args, {
        env: { ...process.env, ...LocalCluster.AGENT_ENV, PHXMARIA_LOG_FORMAT: "json" },
        stdio: ["ignore", "pipe", "pipe"]
      })
      let out = ""
      let err = ""
      child.stdout!.on("data", (d: Buffer) => (out += d.toString()))
      child.stderr!.on("data", (d: Buffer) => (err = (err + d.toString()).slice(-2_000_000)))
      const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)))
      return { child, stdout: () => out, stderr: () => err, exited }
    }),
    (a) =>
      Effect.promise(async () => {
        // systemd's stop: SIGTERM, and what is left after the timeout is killed.
        if (a.child.exitCode === null && a.child.signalCode === null) a.child.kill("SIGTERM")
        const done = await Promise.race([a.exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 30_000))])
        if (!done) a.child.kill("SIGKILL")
      }).pipe(Effect.andThen(killStaleServer(layoutOf(managedDirOf(dataDir)).configFile)))
  )

describe("deployment (docs/deployment.md)", () => {
  it.live("the systemd unit passes systemd-analyze verify, with no warning", () =>
    Effect.gen(function*() {
      // The unit names /opt/phxmaria; here the checkout stands in for it.
      const dir = mkdtempSync(join(tmpdir(), "phxmaria-unit-"))
      try {
        const text = readFileSync(unitFile, "utf8")
        expect(text).toMatch(/^ExecStart=\/opt\/phxmaria\/node_modules\/\.bin\/node .*dist\/main\.js node --config \/etc\/phxmaria\/%i\.yaml/m)
        writeFileSync(join(dir, "phxmaria@.service"), text.replaceAll("/opt/phxmaria", repo))
        const r = yield* run("systemd-analyze", ["verify", join(dir, "phxmaria@.service")])
        expect(r.stderr.trim(), r.stderr).toBe("")
        expect(r.code).toBe(0)
        // It does catch mistakes: a misspelt key is reported.
        writeFileSync(join(dir, "bad@.service"), text.replaceAll("/opt/phxmaria", repo).replace("Restart=on-failure", "Restrat=on-failure"))
        expect((yield* run("systemd-analyze", ["verify", join(dir, "bad@.service")])).stderr).toMatch(/Unknown key 'Restrat'/)
      } finally {
        rmSync(dir, { recursive: true, force: true })
      }
    }), { timeout: 60_000 })

  it.live("three nodes on three addresses from the guide's configs: bootstrap, ready check, first user, status, restart", () =>
    Effect.gen(function*() {
      const root = mkdtempSync(join(tmpdir(), "phxmaria-deploy-"))
      // As LocalCluster: run as root, each mariadbd runs as mysql and must pass through.
      chmodSync(root, 0o711)
      yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(root, { recursive: true, force: true })))
      const etc = join(root, "etc")
      const hosts = ["127.0.0.21", "127.0.0.22", "127.0.0.23"]

      // Step 2: certificates and the token.
      const certs = yield* cli("certs", "--out", join(etc, "tls"), "--cluster", "prod", "--nodes", "1,2,3", "--hosts", hosts.join(","))
      expect(certs.code, certs.stdout + certs.stderr).toBe(0)
      writeFileSync(join(etc, "admin-token"), `${"ab12".repeat(12)}\n`, { mode: 0o600 })

      // Step 3: a config per node, the same ports on every address (two more each for the local mariadbd).
      const ports = {
        peer: yield* LocalCluster.freePort(hosts[0]),
        admin: yield* LocalCluster.freePort(hosts[0]),
        rw: yield* LocalCluster.freePort(hosts[0]),
        ro: yield* LocalCluster.freePort(hosts[0]),
        fwdRw: yield* LocalCluster.freePort(hosts[0]),
        fwdRo: yield* LocalCluster.freePort(hosts[0])
      }
      const nodes: Array<{ readonly nodeId: number; readonly dataDir: string; readonly config: string; readonly host: string; readonly asNobody: boolean }> = []
      // Node 3 runs unprivileged, as the unit runs every node (its own user; mariadbd as that user too).
      const unprivileged = 3
      for (const [i] of hosts.entries()) {
        const nodeId = i + 1
        const dataDir = join(root, "var", `n${nodeId}`)
        mkdirSync(join(root, "var"), { recursive: true, mode: 0o711 })
        const config = join(etc, `n${nodeId}.yaml`)
        if (nodeId === unprivileged) {
          mkdirSync(dataDir, { mode: 0o700 })
          chownSync(dataDir, NOBODY.uid, NOBODY.gid)
        }
        writeFileSync(config, nodeYaml({
          nodeId,
          dataDir,
          etc,
          hosts,
          ports,
          mariadbPort: yield* LocalCluster.freePort(),
          binlogServerPort: yield* LocalCluster.freePort()
        }))
        const valid = yield* cli("check", "--probe", "config", "--config", config)
        expect(valid.code, valid.stderr).toBe(0)
        nodes.push({ nodeId, dataDir, config, host: hosts[i]!, asNobody: nodeId === unprivileged })
      }
      // What the unprivileged node reads is its own (the guide: root:phxmaria, 0640): its config, certificates, keys, token.
      chmodSync(etc, 0o711)
      chmodSync(join(etc, "tls"), 0o711)
      for (const f of [`n${unprivileged}.yaml`, "admin-token", "tls/ca.crt", `tls/node-${unprivileged}.crt`, `tls/node-${unprivileged}.key`, "tls/server.crt", "tls/server.key"]) {
        chownSync(join(etc, f), NOBODY.uid, NOBODY.gid)
      }
      // As the guide's install: the service's user reaches the program (node and dist/).
      for (const dir of [dirname(mainJs), dirname(process.execPath)]) {
        const blocked = blockedFor(NOBODY, dir)
        expect(blocked, `nobody cannot enter ${blocked?.dir} (mode ${blocked?.mode.toString(8)}) on the way to ${dir}: give it passage (chmod o+x), as .ci/run does`).toBeUndefined()
      }
      const asNobody = yield* run("setpriv", [`--reuid=${NOBODY.uid}`, `--regid=${NOBODY.gid}`, "--clear-groups", "--", process.execPath, mainJs, "check", "--probe", "config", "--config", join(etc, `n${unprivileged}.yaml`)])
      expect(asNobody.code, asNobody.stderr).toBe(0)

      // Step 4: the first start, with --bootstrap, as the unit runs it; the unit's ready check.
      const scope = yield* Scope.make()
      const agents = yield* Effect.forEach(nodes, (n) => startAgent(n.config, n.dataDir, ["--bootstrap"], n.asNobody).pipe(Scope.provide(scope)))
      const stopAll = Scope.close(scope, Exit.void)
      yield* Effect.addFinalizer(() => stopAll)
      for (const n of nodes) {
        const ready = yield* cli("check", "--config", n.config, "--probe", "live", "--wait", "120")
        expect(ready.code, `${ready.stdout}${ready.stderr}\n${agents[n.nodeId - 1]!.stderr().slice(-3000)}`).toBe(0)
      }
      // On failure, what each agent said (the digest CI prints does not know these processes).
      const tellAgents = Effect.sync(() => {
        for (const [i, a] of agents.entries()) process.stderr.write(`--- node ${i + 1} stderr (last 4000 chars):\n${a.stderr().slice(-4000)}\n`)
      })
      yield* LocalCluster.waitFor("a healthy cluster (status exit 0)", Effect.map(cli("status", "--config", nodes[0]!.config), (r) => r.code === 0), 120_000).pipe(
        Effect.tapError(() => Effect.andThen(Effect.flatMap(cli("status", "--config", nodes[0]!.config), (r) => Effect.sync(() => process.stderr.write(r.stdout + r.stderr))), tellAgents))
      )

      // Logs: JSON lines on stderr with the date and the node id; stdout holds the ready line alone.
      for (const [i, a] of agents.entries()) {
        const lines = a.stdout().trim().split("\n")
        expect(lines).toHaveLength(1)
        expect(JSON.parse(lines[0]!)).toMatchObject({ event: "ready", nodeId: i + 1, adminPort: ports.admin, rwPort: ports.rw })
        const logs = a.stderr().trim().split("\n").map((l) => JSON.parse(l) as { time: string; level: string; node: number; message: string })
        expect(logs.length).toBeGreaterThan(3)
        for (const l of logs) {
          expect(l.time).toMatch(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/)
          expect(l.node).toBe(i + 1)
        }
        expect(logs.some((l) => /database role: .* -> (replica|master)/.test(l.message))).toBe(true)
      }

      // Step 5: the first user, through the log; it logs in over verified TLS through every node.
      const password = join(root, "app.password")
      writeFileSync(password, "a-long-password\n", { mode: 0o600 })
      const added = yield* cli("user", "add", "--config", nodes[0]!.config, "--name", "app", "--host", "127.0.0.%", "--password-file", password, "--grant", "ALL ON app.*")
      expect(added.code, added.stdout + added.stderr).toBe(0)
      const ca = readFileSync(join(etc, "tls", "ca.crt"))
      const connect = (host: string, port: number) =>
        Effect.promise(() => mysql.createConnection({ host, port, user: "app", password: "a-long-password", ssl: { ca } }))
      const rw = yield* connect(hosts[1]!, ports.rw)
      yield* Effect.promise(() => rw.query("CREATE DATABASE app"))
      yield* Effect.promise(() => rw.query("CREATE TABLE app.t (id INT PRIMARY KEY, s VARCHAR(8))"))
      // utf8mb4 by default: a 4-byte character goes in.
      yield* Effect.promise(() => rw.query("INSERT INTO app.t VALUES (1, ?)", ["\u{1F600}"]))
      yield* Effect.promise(() => rw.end())
      for (const h of hosts) {
        const ro = yield* connect(h, ports.ro)
        yield* LocalCluster.waitFor(`the row through ${h}'s RO port`, Effect.promise(() =>
          ro.query("SELECT s FROM app.t WHERE id = 1").then(([rows]) => (rows as Array<{ s: string }>)[0]?.s === "\u{1F600}", () => false)), 30_000)
        yield* Effect.promise(() => ro.end())
      }

      // Step 6: status (exit 0), health, metrics.
      const status = yield* cli("status", "--config", nodes[0]!.config)
      expect(status.code, status.stdout).toBe(0)
      for (const n of nodes) {
        const h = yield* Effect.promise(() => fetch(`http://${n.host}:${ports.admin}/health`).then((r) => r.status))
        expect(h).toBe(200)
      }

      // The unprivileged node's agent and mariadbd ran as nobody.
      const unprivilegedAgent = agents[unprivileged - 1]!
      expect(statSync(`/proc/${unprivilegedAgent.child.pid}`).uid).toBe(NOBODY.uid)
      const serverPid = Number(readFileSync(layoutOf(managedDirOf(nodes[unprivileged - 1]!.dataDir)).pidFile, "utf8").trim())
      expect(statSync(`/proc/${serverPid}`).uid).toBe(NOBODY.uid)

      // After the first start the flag goes: a node restarted without it comes back as a member.
      const last = nodes[2]!
      const lastAgent = agents[2]!
      lastAgent.child.kill("SIGTERM")
      expect(yield* Effect.promise(() => lastAgent.exited)).toBe(0)
      yield* startAgent(last.config, last.dataDir, [], last.asNobody)
      const again = yield* cli("check", "--config", last.config, "--probe", "health", "--wait", "120")
      expect(again.code, again.stdout + again.stderr).toBe(0)
      yield* LocalCluster.waitFor("a healthy cluster after the restart", Effect.map(cli("status", "--config", nodes[0]!.config), (r) => r.code === 0), 120_000)
    }).pipe(Effect.scoped), { timeout: 420_000 })
})
