import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { execFile } from "node:child_process"
import { readFileSync } from "node:fs"
import { join } from "node:path"
import mysql from "mysql2/promise"
import * as LocalCluster from "../src/testing/LocalCluster.js"
import { adminQuery, APP_PASSWORD, APP_USER, clusterWithTable, waitForMaster } from "./support/dbCluster.js"

/** The mariadb command-line client: its exit code and output. */
const mariadbCli = (args: ReadonlyArray<string>) =>
  Effect.callback<{ readonly code: number; readonly out: string }>((resume) => {
    execFile("mariadb", [...args], { timeout: 30_000 }, (error, stdout, stderr) =>
      resume(Effect.succeed({ code: error === null ? 0 : typeof error.code === "number" ? error.code : 1, out: stdout + stderr })))
  })

/** A mysql2 connection over TLS (verifying the cluster's certificate), or the error's message. */
const tlsConnection = (port: number, ca: Buffer, user = APP_USER, password = APP_PASSWORD) =>
  Effect.promise(() =>
    mysql.createConnection({ host: "127.0.0.1", port, user, password, ssl: { ca }, connectTimeout: 5_000 }).then(
      (c) => ({ conn: c }),
      (e: Error) => ({ error: e.message })
    )
  )

const comKill = (n: Parameters<typeof adminQuery>[0]) =>
  Effect.map(adminQuery<{ Value: string }>(n, "SHOW GLOBAL STATUS LIKE 'Com_kill'"), (r) => Number(r[0]!.Value))

describe("clients over TLS", () => {
  it.live("`mariadb --ssl-verify-server-cert` through any node's RW port reaches the master's MariaDB over TLS; REQUIRE SSL accounts work; a KILL inside TLS is still read and handled by the proxy", () =>
    Effect.gen(function*() {
      const { c } = yield* clusterWithTable({ nodes: 3, database: true, tls: true, clientTls: true }, "d.t", 60_000)
      const master = yield* waitForMaster(c, "the master")
      const replica = c.nodes.find((n) => n.nodeId !== master.nodeId)!
      const caFile = join(c.dir, "tls", "ca.crt")
      const ca = readFileSync(caFile)

      // Through the master's own RW port and through a replica's (forwarded to the master).
      for (const [i, n] of [master, replica].entries()) {
        const r = yield* mariadbCli([
          "-h127.0.0.1", `-P${n.rwPort}`, `-u${APP_USER}`, `-p${APP_PASSWORD}`, `--ssl-ca=${caFile}`, "--ssl-verify-server-cert", "-N",
          "-e", `SHOW STATUS LIKE 'Ssl_cipher'; INSERT INTO d.t VALUES (${i + 1}, ${n.nodeId}); SELECT @@server_id`
        ])
        expect(r.code, r.out).toBe(0)
        expect(r.out).toMatch(/Ssl_cipher\s+TLS_/)
      }
      expect(yield* adminQuery(master, "SELECT COUNT(*) AS n FROM d.t")).toEqual([{ n: 2 }])

      // MariaDB itself sees TLS: an account it lets in over TLS only.
      yield* adminQuery(master, "CREATE USER 'tlsonly'@'%' IDENTIFIED BY 'tls-secret' REQUIRE SSL")
      yield* adminQuery(master, "GRANT SELECT ON d.* TO 'tlsonly'@'%'")
      const viaTls = yield* tlsConnection(replica.rwPort!, ca, "tlsonly", "tls-secret")
      expect("conn" in viaTls ? "connected" : viaTls.error).toBe("connected")
      if ("conn" in viaTls) yield* Effect.promise(() => viaTls.conn.end())
      const plain = yield* Effect.promise(() =>
        mysql.createConnection({ host: "127.0.0.1", port: replica.rwPort!, user: "tlsonly", password: "tls-secret" }).then((x) => (x.destroy(), "connected"), (e: Error) => e.message))
      expect(plain).toMatch(/Access denied/)

      // A KILL inside a TLS session: the proxy reads it, closes the victim's relay, and MariaDB never gets it.
      const killsBefore = yield* comKill(master)
      const victim = yield* tlsConnection(master.rwPort!, ca)
      const killer = yield* tlsConnection(master.rwPort!, ca)
      if (!("conn" in victim) || !("conn" in killer)) return expect.fail(`TLS connections failed: ${JSON.stringify([victim, killer])}`)
      const [[row]] = (yield* Effect.promise(() => victim.conn.query("SELECT CONNECTION_ID() AS id"))) as unknown as [[{ id: number }]]
      yield* Effect.promise(() => killer.conn.query(`KILL ${row.id}`))
      const after = yield* Effect.promise(() => victim.conn.query("SELECT 1").then(() => "answered", (e: Error) => e.message))
      expect(after).not.toBe("answered")
      expect(yield* comKill(master)).toBe(killsBefore)
      yield* Effect.promise(() => killer.conn.end())

      // No majority (the other agents stopped): the RW and RO ports refuse in words every client
      // reads, the mariadb CLI over verified TLS as well as mysql2 (issue 16: it got "malformed packet").
      const others = c.nodes.filter((n) => n.nodeId !== master.nodeId)
      for (const n of others) process.kill(n.pid()!, "SIGSTOP")
      yield* Effect.gen(function*() {
        const cli = (port: number) => mariadbCli(["-h127.0.0.1", `-P${port}`, `-u${APP_USER}`, `-p${APP_PASSWORD}`, `--ssl-ca=${caFile}`, "--ssl-verify-server-cert", "-e", "SELECT 1"])
        yield* LocalCluster.waitFor("the RW port to refuse for want of a master", Effect.map(cli(master.rwPort!), (r) => /no master available/.test(r.out)), 30_000)
        const rw = yield* cli(master.rwPort!)
        expect(rw.code).not.toBe(0)
        expect(rw.out).toMatch(/^ERROR 1105 \(08004\).*no master available/m)
        expect((yield* cli(master.roPort!)).out).toMatch(/^ERROR 1105 \(08004\)/m)
        const viaMysql2 = yield* tlsConnection(master.rwPort!, ca)
        expect("error" in viaMysql2 ? viaMysql2.error : "connected").toMatch(/no master available/)
      }).pipe(Effect.ensuring(Effect.sync(() => {
        for (const n of others) process.kill(n.pid()!, "SIGCONT")
      })))
    }).pipe(Effect.scoped), { timeout: 180_000 })

  it.live("with mariadb.ssl.require a login without TLS gets an error on the RW and RO ports and on MariaDB's own TCP port; over TLS writes commit and reach every replica", () =>
    Effect.gen(function*() {
      const { c } = yield* clusterWithTable({ nodes: 3, database: true, tls: true, clientTls: "required" }, "d.t", 60_000)
      const master = yield* waitForMaster(c, "the master")
      const replica = c.nodes.find((n) => n.nodeId !== master.nodeId)!
      const ca = readFileSync(join(c.dir, "tls", "ca.crt"))
      const plainLogin = (port: number) => Effect.promise(() =>
        mysql.createConnection({ host: "127.0.0.1", port, user: APP_USER, password: APP_PASSWORD, connectTimeout: 5_000 })
          .then((x) => (x.destroy(), "connected"), (e: Error) => e.message))
      for (const port of [master.rwPort!, replica.rwPort!, master.roPort!, replica.roPort!]) {
        expect(yield* plainLogin(port), `port ${port}`).toMatch(/insecure transport are prohibited/)
      }
      // MariaDB's own port (loopback): require_secure_transport (MariaDB answers "Access denied"); over TLS it lets in.
      expect(yield* plainLogin(master.mariadb!.port)).toMatch(/Access denied|insecure transport/)
      const direct = yield* Effect.promise(() =>
        mysql.createConnection({ host: "127.0.0.1", port: master.mariadb!.port, user: APP_USER, password: APP_PASSWORD, ssl: { rejectUnauthorized: false } })
          .then((x) => (x.destroy(), "connected"), (e: Error) => e.message))
      expect(direct).toBe("connected")

      // Over TLS, through a replica's RW port (forwarded): the write commits and replicates
      // (the master's capture reads its binlog over the socket, which is a secure transport).
      const viaTls = yield* tlsConnection(replica.rwPort!, ca)
      if (!("conn" in viaTls)) return expect.fail(viaTls.error)
      yield* Effect.promise(() => viaTls.conn.query("INSERT INTO d.t VALUES (1, 1)"))
      yield* Effect.promise(() => viaTls.conn.end())
      for (const n of c.nodes) {
        yield* LocalCluster.waitFor(`node ${n.nodeId} to have the row`, Effect.map(
          adminQuery<{ n: number }>(n, "SELECT COUNT(*) AS n FROM d.t"),
          (rows) => Number(rows[0]?.n) === 1
        ), 30_000)
      }
    }).pipe(Effect.scoped), { timeout: 180_000 })
})
