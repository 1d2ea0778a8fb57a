import { execFile } from "node:child_process"
import * as net from "node:net"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Layer, Scope } from "effect"
import mysql from "mysql2/promise"
import * as Proxy from "../src/services/proxy/Proxy.js"
import * as Routing from "../src/services/proxy/Routing.js"
import { MariaDbInstance, type MariaDbInstanceInfo } from "./support/MariaDbInstance.js"

const PROXY_NETS = { proxy_protocol_networks: "127.0.0.0/8,localhost" }
const PASSWORD = "pw-proxy"

let scope: Scope.Closeable
let dbA: MariaDbInstanceInfo
let dbB: MariaDbInstanceInfo

beforeAll(async () => {
  scope = await Effect.runPromise(Scope.make())
  const [a, b] = await Effect.runPromise(
    Effect.all([MariaDbInstance.make({ extraConfig: PROXY_NETS }), MariaDbInstance.make({ extraConfig: PROXY_NETS })], {
      concurrency: "unbounded"
    }).pipe(Scope.provide(scope))
  )
  dbA = a!
  dbB = b!
  for (const db of [dbA, dbB]) {
    await Effect.runPromise(Effect.gen(function*() {
      yield* db.query(`CREATE USER 'app'@'%' IDENTIFIED BY '${PASSWORD}'`)
      yield* db.query(`GRANT ALL ON *.* TO 'app'@'%'`)
      yield* db.query(`CREATE USER 'only2'@'127.0.0.2' IDENTIFIED BY '${PASSWORD}'`)
      yield* db.query(`GRANT SELECT ON *.* TO 'only2'@'127.0.0.2'`)
      yield* db.query("CREATE DATABASE app")
      yield* db.query("CREATE TABLE app.t (id INT PRIMARY KEY, v VARCHAR(50)) ENGINE=InnoDB")
      yield* db.query("INSERT INTO app.t VALUES (0, ?)", [db === dbA ? "on A" : "on B"])
    }))
  }
}, 120_000)

afterAll(async () => {
  if (scope !== undefined) await Effect.runPromise(Scope.close(scope, Exit.void))
})

const local = (db: MariaDbInstanceInfo): Routing.Target => ({ kind: "local", host: db.host, port: db.port })

/** A proxy in the test's scope, with a settable routing table. */
const startProxy = (routes: Routing.Routes, options: Partial<Proxy.ProxyOptions> = {}) =>
  Effect.gen(function*() {
    const routing = yield* Routing.makeSettable(routes)
    const proxy = yield* Proxy.make({ host: "127.0.0.1", rwPort: 0, roPort: 0, ...options }).pipe(
      Effect.provide(Layer.succeed(Routing.Routing, routing))
    )
    return { routing, proxy }
  })

/** mysql2 ignores `localAddress` for plain TCP: a `stream` factory binds the source address. */
const clientOptions = (port: number, extra: mysql.ConnectionOptions & { localAddress?: string }): mysql.ConnectionOptions => {
  const { localAddress, ...rest } = extra
  return {
    host: "127.0.0.1",
    port,
    user: "app",
    password: PASSWORD,
    connectTimeout: 10_000,
    ...(localAddress === undefined ? {} : { stream: () => net.connect({ host: "127.0.0.1", port, localAddress }) }),
    ...rest
  }
}

const connect = (port: number, extra: mysql.ConnectionOptions & { localAddress?: string } = {}) =>
  Effect.promise(() => mysql.createConnection(clientOptions(port, extra)))

const connectError = (port: number, extra: mysql.ConnectionOptions & { localAddress?: string } = {}) =>
  Effect.tryPromise({
    try: () => mysql.createConnection(clientOptions(port, extra)),
    catch: (e) => e as Error & { code?: string; errno?: number }
  }).pipe(
    Effect.tap((c) => Effect.promise(() => c.end())),
    Effect.flip
  )

/** The `mariadb` command-line client's error output for a login through `port` (it must fail). */
const cliError = (port: number) =>
  Effect.promise(() =>
    new Promise<string>((resolve, reject) =>
      execFile("mariadb", ["--protocol=TCP", "-h127.0.0.1", `-P${port}`, "-uapp", `-p${PASSWORD}`, "--connect-timeout=10", "-e", "SELECT 1"], { timeout: 20_000 }, (error, stdout, stderr) =>
        error === null ? reject(new Error(`mariadb succeeded: ${stdout}`)) : resolve(String(stderr))))
  )

const one = <T>(conn: mysql.Connection, sql: string, params: Array<unknown> = []) =>
  Effect.promise(async () => {
    const [rows] = await conn.query(sql, params)
    return (rows as Array<T>)[0]!
  })

const close = (conn: mysql.Connection) => Effect.promise(() => conn.end().catch(() => undefined))

/** Resolves when the mysql2 connection's socket has closed. */
const socketClosed = (conn: mysql.Connection) =>
  Effect.callback<void>((resume) => {
    const stream = (conn as unknown as { connection: { stream: net.Socket } }).connection.stream
    if (stream.destroyed) return resume(Effect.void)
    stream.once("close", () => resume(Effect.void))
  })

/** Polls `check` until it holds, failing after `ms`. */
const eventually = (check: Effect.Effect<boolean>, ms = 5000) =>
  Effect.gen(function*() {
    const deadline = Date.now() + ms
    while (!(yield* check)) {
      if (Date.now() > deadline) return yield* Effect.die(new Error("condition not met in time"))
      yield* Effect.sleep("20 millis")
    }
  })

/** Raw socket from `localAddress`; resolves with what was received when the peer closes. */
const rawExchange = (port: number, localAddress: string, send: Uint8Array) =>
  Effect.callback<{ received: number; closed: boolean }>((resume) => {
    const s = net.connect({ host: "127.0.0.1", port, localAddress })
    let received = 0
    s.on("data", (d) => {
      received += d.length
    })
    s.on("error", () => {})
    s.on("connect", () => {
      if (send.length > 0) s.write(send)
    })
    const timer = setTimeout(() => {
      s.destroy()
      resume(Effect.succeed({ received, closed: false }))
    }, 8000)
    s.on("close", () => {
      clearTimeout(timer)
      resume(Effect.succeed({ received, closed: true }))
    })
  })

describe("Proxy", () => {
  it.live("RW runs a transaction against the master; RO reads the replica's data", () =>
    Effect.gen(function*() {
      const { proxy } = yield* startProxy({ rw: local(dbA), ro: local(dbB) })
      const rw = yield* connect(proxy.addresses.rw!.port)
      yield* Effect.promise(() => rw.beginTransaction())
      yield* Effect.promise(() => rw.query("INSERT INTO app.t VALUES (1, 'tx')"))
      yield* Effect.promise(() => rw.commit())
      expect(yield* one<{ v: string }>(rw, "SELECT v FROM app.t WHERE id = 1")).toEqual({ v: "tx" })
      const stats = yield* proxy.stats
      expect(stats.listeners.rw?.open).toBe(1)
      expect(stats.upstreams[`local 127.0.0.1:${dbA.port}`]).toBe(1)
      yield* close(rw)
      yield* Effect.promise(() => Promise.resolve()).pipe(Effect.andThen(dbA.query("DELETE FROM app.t WHERE id = 1")))

      const ro = yield* connect(proxy.addresses.ro!.port)
      expect(yield* one<{ v: string }>(ro, "SELECT v FROM app.t WHERE id = 0")).toEqual({ v: "on B" })
      expect(yield* one<{ id: number }>(ro, "SELECT @@server_id AS id")).toEqual({ id: dbB.serverId })
      yield* close(ro)
      yield* eventually(Effect.map(proxy.stats, (s) => s.listeners.rw?.open === 0 && s.listeners.ro?.open === 0))
    }))

  it.live("MariaDB sees the client's real address, with grants by host, through one and two hops", () =>
    Effect.gen(function*() {
      // A: this node's MariaDB is the master, with forward ports for member 127.0.0.1
      const a = yield* startProxy({ rw: local(dbA), ro: local(dbA) }, {
        forwardRwPort: 0,
        forwardRoPort: 0,
        members: ["127.0.0.1"],
        localMariaDb: { host: dbA.host, port: dbA.port }
      })
      // B: forwards RW to A's forward port (two hops), v2 headers on its hop
      const b = yield* startProxy({
        rw: { kind: "forward", host: "127.0.0.1", port: a.proxy.addresses.forwardRw!.port },
        ro: { kind: "forward", host: "127.0.0.1", port: a.proxy.addresses.forwardRo!.port }
      }, { proxyProtocol: "v2" })

      for (const port of [a.proxy.addresses.rw!.port, b.proxy.addresses.rw!.port, b.proxy.addresses.ro!.port]) {
        const c = yield* connect(port, { localAddress: "127.0.0.2" })
        const row = yield* one<{ u: string; sid: number; id: number }>(c, "SELECT USER() AS u, @@server_id AS sid, CONNECTION_ID() AS id")
        expect(row.u).toBe("app@127.0.0.2")
        expect(row.sid).toBe(dbA.serverId)
        const [pl] = yield* dbA.query<{ HOST: string }>("SELECT HOST FROM information_schema.PROCESSLIST WHERE ID = ?", [row.id])
        expect(pl!.HOST).toMatch(/^127\.0\.0\.2:\d+$/)
        yield* close(c)

        const only = yield* connect(port, { localAddress: "127.0.0.2", user: "only2" })
        expect(yield* one<{ u: string }>(only, "SELECT CURRENT_USER() AS u")).toEqual({ u: "only2@127.0.0.2" })
        yield* close(only)
        const refused = yield* connectError(port, { localAddress: "127.0.0.3", user: "only2" })
        expect(refused.message).toMatch(/Access denied for user 'only2'@'127.0.0.3'/)
      }
      const s = yield* a.proxy.stats
      expect(s.listeners.forwardRw!.accepted).toBeGreaterThanOrEqual(3)
    }))

  it.live("a forward port closes non-members, malformed headers, and RW relays when told", () =>
    Effect.gen(function*() {
      const a = yield* startProxy({ rw: local(dbA), ro: local(dbA) }, {
        forwardRwPort: 0,
        members: ["127.0.0.1"],
        localMariaDb: { host: dbA.host, port: dbA.port }
      })
      const fwd = a.proxy.addresses.forwardRw!.port
      const header = new TextEncoder().encode("PROXY TCP4 10.9.8.7 127.0.0.1 1234 3306\r\n")
      expect(yield* rawExchange(fwd, "127.0.0.5", header)).toEqual({ received: 0, closed: true })
      expect(yield* rawExchange(fwd, "127.0.0.1", new TextEncoder().encode("PROXY TCP4 999.1.1.1 x\r\n")))
        .toEqual({ received: 0, closed: true })
      expect(yield* rawExchange(fwd, "127.0.0.1", new TextEncoder().encode("\x16\x03\x01 garbage".repeat(20))))
        .toEqual({ received: 0, closed: true })
      expect(yield* rawExchange(fwd, "127.0.0.1", new TextEncoder().encode("PROXY UNKNOWN\r\n")))
        .toEqual({ received: 0, closed: true })
      const s = yield* a.proxy.stats
      expect(s.listeners.forwardRw!.refused).toBe(4)

      // through B's RW port to A's forward port: works, then A steps down
      const b = yield* startProxy({ rw: { kind: "forward", host: "127.0.0.1", port: fwd }, ro: local(dbB) })
      const c = yield* connect(b.proxy.addresses.rw!.port)
      expect(yield* one<{ sid: number }>(c, "SELECT @@server_id AS sid")).toEqual({ sid: dbA.serverId })
      yield* a.proxy.refuseRw(true)
      expect(yield* a.proxy.closeAllRw).toBe(1)
      yield* socketClosed(c).pipe(Effect.timeout("1 second"))
      const err = yield* connectError(b.proxy.addresses.rw!.port)
      expect(err.message).toMatch(/not the master/)
      expect(err.errno).toBe(Proxy.ERR_UNAVAILABLE)
      // A refusal from the member's forward port reaches the mariadb CLI through B's relay too.
      expect(yield* cliError(b.proxy.addresses.rw!.port)).toMatch(/^ERROR 1105 \(08004\).*not the master/m)
      yield* a.proxy.refuseRw(false)
      const c2 = yield* connect(b.proxy.addresses.rw!.port)
      yield* close(c2)
    }))

  it.live("the RW gate is asked on every chunk to this node's own MariaDB: closed, the next query closes the connection (RW port and forward port), RO untouched", () =>
    Effect.gen(function*() {
      let open = true
      const a = yield* startProxy({ rw: local(dbA), ro: local(dbA) }, {
        forwardRwPort: 0,
        members: ["127.0.0.1"],
        localMariaDb: { host: dbA.host, port: dbA.port },
        rwGate: () => open
      })
      const b = yield* startProxy({ rw: { kind: "forward", host: "127.0.0.1", port: a.proxy.addresses.forwardRw!.port }, ro: local(dbB) })
      const direct = yield* connect(a.proxy.addresses.rw!.port)
      const forwarded = yield* connect(b.proxy.addresses.rw!.port)
      const reader = yield* connect(a.proxy.addresses.ro!.port)
      for (const c of [direct, forwarded, reader]) expect(yield* one<{ sid: number }>(c, "SELECT @@server_id AS sid")).toEqual({ sid: dbA.serverId })
      open = false
      for (const c of [direct, forwarded]) {
        const failed = yield* Effect.promise(() => c.query("SELECT 1").then(() => "answered", (e: Error) => e.message))
        expect(failed).not.toBe("answered")
        yield* socketClosed(c).pipe(Effect.timeout("2 seconds"))
      }
      expect(yield* one<{ sid: number }>(reader, "SELECT @@server_id AS sid")).toEqual({ sid: dbA.serverId })
      // A new RW connection is closed before its first byte reaches MariaDB.
      const refused = yield* connectError(a.proxy.addresses.rw!.port)
      expect(refused.message).not.toBe("")
      yield* close(reader)
    }))

  it.live("a client disconnect rolls the transaction back; KILL closes the client", () =>
    Effect.gen(function*() {
      const { proxy } = yield* startProxy({ rw: local(dbA), ro: local(dbA) })
      const port = proxy.addresses.rw!.port
      const c = yield* connect(port)
      const { id } = yield* one<{ id: number }>(c, "SELECT CONNECTION_ID() AS id")
      yield* Effect.promise(() => c.beginTransaction())
      yield* Effect.promise(() => c.query("INSERT INTO app.t VALUES (2, 'uncommitted')"))
      c.destroy()
      yield* eventually(Effect.map(
        dbA.query("SELECT ID FROM information_schema.PROCESSLIST WHERE ID = ?", [id]).pipe(Effect.orDie),
        (rows) => rows.length === 0
      ))
      expect(yield* dbA.query("SELECT * FROM app.t WHERE id = 2")).toEqual([])

      const k = yield* connect(port)
      const killed = yield* one<{ id: number }>(k, "SELECT CONNECTION_ID() AS id")
      yield* dbA.query(`KILL ${killed.id}`)
      yield* socketClosed(k).pipe(Effect.timeout("2 seconds"))
      yield* eventually(Effect.map(proxy.stats, (s) => s.listeners.rw?.open === 0))
    }))

  it.live("KILL through the proxy closes the victim's connection and never reaches MariaDB; other users' sessions and other forms are refused", () =>
    Effect.gen(function*() {
      const { proxy } = yield* startProxy({ rw: local(dbA), ro: local(dbA) })
      const port = proxy.addresses.rw!.port
      const victim = yield* connect(port)
      const { id } = yield* one<{ id: number }>(victim, "SELECT CONNECTION_ID() AS id")
      const killer = yield* connect(proxy.addresses.ro!.port)
      const killsBefore = Number((yield* dbA.query("SHOW GLOBAL STATUS LIKE 'Com_kill'"))[0]!.Value)
      const answer = yield* Effect.promise(() => killer.query(`KILL QUERY ${id}`).then(() => "ok", (e: Error) => e.message))
      expect(answer).toBe("ok")
      yield* socketClosed(victim).pipe(Effect.timeout("2 seconds"))
      // Refused, each with its own error: no such session, other forms, KILL inside a statement.
      for (const [sql, error] of [
        [`KILL ${id + 100000}`, /Unknown thread id/],
        ["KILL USER app", /this form of KILL/],
        ["SELECT 1; KILL 5", /on its own/],
        ["/*!KILL 5*/", /on its own/]
      ] as const) {
        const got = yield* Effect.promise(() => killer.query(sql).then(() => "answered", (e: Error) => e.message))
        expect(got, sql).toMatch(error)
      }
      // Another user's session: refused, and it stays open.
      const other = yield* connect(port, { user: "only2", localAddress: "127.0.0.2" })
      const otherId = (yield* one<{ id: number }>(other, "SELECT CONNECTION_ID() AS id")).id
      const denied = yield* Effect.promise(() => killer.query(`KILL ${otherId}`).then(() => "answered", (e: Error) => e.message))
      expect(denied).toMatch(/not owner of thread/)
      expect(yield* one<{ n: number }>(other, "SELECT 1 AS n")).toEqual({ n: 1 })
      // The killer's own connection still works, and MariaDB never ran a KILL.
      expect(yield* one<{ n: number }>(killer, "SELECT 2 AS n")).toEqual({ n: 2 })
      expect(Number((yield* dbA.query("SHOW GLOBAL STATUS LIKE 'Com_kill'"))[0]!.Value)).toBe(killsBefore)
      yield* close(other)
      yield* close(killer)
    }))

  it.live("a routing change closes RW connections to the old target; new ones reach the new one", () =>
    Effect.gen(function*() {
      const { proxy, routing } = yield* startProxy({ rw: local(dbA), ro: local(dbB) })
      const port = proxy.addresses.rw!.port
      const olds = yield* Effect.all([connect(port), connect(port), connect(port)])
      const ro = yield* connect(proxy.addresses.ro!.port)
      for (const c of olds) expect(yield* one<{ sid: number }>(c, "SELECT @@server_id AS sid")).toEqual({ sid: dbA.serverId })
      yield* routing.set("rw", local(dbB))
      yield* Effect.forEach(olds, (c) => socketClosed(c).pipe(Effect.timeout("1 second")), { discard: true })
      const fresh = yield* connect(port)
      expect(yield* one<{ sid: number }>(fresh, "SELECT @@server_id AS sid")).toEqual({ sid: dbB.serverId })
      // RO connections are untouched
      expect(yield* one<{ n: number }>(ro, "SELECT 1 AS n")).toEqual({ n: 1 })
      yield* close(fresh)
      yield* close(ro)
    }))

  it.live("no target, an unreachable upstream and too many connections give the client a MySQL error", () =>
    Effect.gen(function*() {
      // a port that refuses connections
      const dead = yield* Effect.promise(() =>
        new Promise<number>((resolve) => {
          const s = net.createServer().listen(0, "127.0.0.1", () => {
            const p = (s.address() as net.AddressInfo).port
            s.close(() => resolve(p))
          })
        })
      )
      const { proxy } = yield* startProxy(
        { rw: Routing.noTarget("no master available"), ro: { kind: "local", host: "127.0.0.1", port: dead } },
        { maxConnections: 1 }
      )
      const t0 = Date.now()
      const e1 = yield* connectError(proxy.addresses.rw!.port)
      expect(e1.message).toMatch(/no master available/)
      expect(e1.errno).toBe(Proxy.ERR_UNAVAILABLE)
      expect((e1 as { sqlState?: string }).sqlState).toBe("08004")
      const e2 = yield* connectError(proxy.addresses.ro!.port)
      expect(e2.message).toMatch(/cannot reach upstream local 127\.0\.0\.1:\d+/)
      expect(Date.now() - t0).toBeLessThan(5000)
      // libmariadb (the mariadb CLI and every client built on it) reads the same code and text
      expect(yield* cliError(proxy.addresses.rw!.port)).toMatch(/^ERROR 1105 \(08004\).*no master available/m)
      expect(yield* cliError(proxy.addresses.ro!.port)).toMatch(/^ERROR 1105 \(08004\).*cannot reach upstream local/m)

      // the bound: one connection per listener
      const slowRo = yield* startProxy({ rw: local(dbA), ro: local(dbA) }, { maxConnections: 1 })
      const held = yield* connect(slowRo.proxy.addresses.ro!.port)
      const e4 = yield* connectError(slowRo.proxy.addresses.ro!.port)
      expect(e4.message).toMatch(/too many connections through this proxy/)
      expect(e4.errno).toBe(1040)
      expect(yield* cliError(slowRo.proxy.addresses.ro!.port)).toMatch(/^ERROR 1040 \(08004\).*too many connections through this proxy/m)
      yield* close(held)
    }))

  it.live("500 concurrent clients through one listener all succeed", () =>
    Effect.gen(function*() {
      yield* dbA.query("SET GLOBAL max_connections = 700")
      const { proxy } = yield* startProxy({ rw: local(dbA), ro: local(dbA) })
      const port = proxy.addresses.rw!.port
      const results = yield* Effect.forEach(
        Array.from({ length: 500 }, (_, i) => i),
        (i) =>
          Effect.acquireUseRelease(
            connect(port),
            (c) =>
              Effect.gen(function*() {
                const a = yield* one<{ n: number }>(c, "SELECT ? + 1 AS n", [i])
                const b = yield* one<{ v: string }>(c, "SELECT v FROM app.t WHERE id = 0")
                return a.n === i + 1 && b.v === "on A"
              }),
            close
          ),
        { concurrency: 500 }
      )
      expect(results.every((x) => x)).toBe(true)
      yield* eventually(Effect.map(proxy.stats, (s) => s.listeners.rw?.open === 0))
    }), 60_000)

  it.live("a client that never reads a large result does not make the proxy buffer it", () =>
    Effect.gen(function*() {
      const { proxy } = yield* startProxy({ rw: local(dbA), ro: local(dbA) })
      const c = yield* connect(proxy.addresses.rw!.port, { database: "app" })
      const [[check]] = (yield* Effect.promise(() => c.query("SELECT COUNT(*) AS n FROM seq_1_to_100000"))) as unknown as [[{ n: number }]]
      expect(Number(check.n)).toBe(100000)
      const stream = (c as unknown as { connection: { stream: net.Socket } }).connection.stream
      // mysql2 resumes its socket when a command starts: keep it paused for good
      stream.pause()
      stream.resume = function() {
        return this
      }
      // about 100 MB of result, never read
      c.query("SELECT REPEAT('x', 1000) AS big FROM seq_1_to_100000").catch(() => undefined)
      yield* Effect.sleep("1500 millis")
      const s = yield* proxy.stats
      expect(s.listeners.rw!.open).toBe(1)
      expect(s.listeners.rw!.buffered).toBeLessThan(1024 * 1024)
      // MariaDB is blocked on the write, not done
      const rows = yield* dbA.query<{ STATE: string }>(
        "SELECT STATE FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT REPEAT%'"
      )
      expect(rows.length).toBe(1)
      c.destroy()
      yield* eventually(Effect.map(proxy.stats, (st) => st.listeners.rw?.open === 0))
    }))
})
