import { describe, expect, it } from "@effect/vitest"
import { Data, Effect, Queue, Schema } from "effect"
import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs"
import * as net from "node:net"
import { tmpdir } from "node:os"
import { dirname, join } from "node:path"
import * as tls from "node:tls"
import { encodeFrame } from "../src/domain/wire/frame.js"
import * as Transport from "../src/services/paxos/Transport.js"
import * as Certificates from "../src/services/tls/Certificates.js"
import * as PeerTls from "../src/services/tls/PeerTls.js"
import * as LocalCluster from "../src/testing/LocalCluster.js"
import mysql from "mysql2/promise"
import { serverUser } from "../src/services/database/MariaDbLayout.js"
import { APP_PASSWORD, APP_USER, clusterWithTable, mariadbPid, runCli, startWriter, waitForMaster, writesFlowing } from "./support/dbCluster.js"

/** The real uid a process runs as (/proc). */
const uidOf = (pid: number) => Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1])

const Ping = Schema.TaggedStruct("Ping", { n: Schema.Int })
type Ping = typeof Ping.Type
const CLUSTER = "tls-test"

class SessionError extends Data.TaggedError("SessionError")<{ readonly cause: unknown }> {}

/** A temp directory with a CA and node 1..3 certificates, and another CA's node 2 certificate. */
const certificates = Effect.acquireRelease(
  Effect.gen(function*() {
    const dir = mkdtempSync(join(tmpdir(), "phxmaria-tls-"))
    const ours = yield* Certificates.issue({ dir: join(dir, "ours"), clusterId: CLUSTER, nodes: [1, 2, 3], hosts: new Map([[1, ["127.0.0.1"]]]) })
    const other = yield* Certificates.issue({ dir: join(dir, "other"), clusterId: CLUSTER, nodes: [2] })
    const load = (issued: Certificates.IssuedCertificates, nodeId: number) => {
      const n = issued.nodes.find((x) => x.nodeId === nodeId)!
      return PeerTls.load({ ca: issued.ca, cert: n.cert, key: n.key }, nodeId)
    }
    return { dir, ours, tls1: yield* load(ours, 1), tls2: yield* load(ours, 2), tls3: yield* load(ours, 3), foreign2: yield* load(other, 2) }
  }),
  ({ dir }) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
)

/**
 * Connects (plain TCP, or TLS with `secure`), writes `bytes` once connected, and gives
 * everything received by the time the listener closes the connection (bounded).
 */
const session = (port: number, bytes: Uint8Array, secure?: tls.ConnectionOptions) =>
  Effect.callback<{ readonly received: Buffer; readonly error: string | undefined }, SessionError>((resume) => {
    const received: Array<Buffer> = []
    let error: string | undefined
    const socket: net.Socket = secure === undefined
      ? net.connect({ host: "127.0.0.1", port }, () => socket.write(bytes))
      : tls.connect({ host: "127.0.0.1", port, ...secure }, () => socket.write(bytes))
    socket.on("data", (chunk: Buffer) => received.push(chunk))
    socket.on("error", (e) => {
      error = e.message
    })
    socket.on("close", () => resume(Effect.succeed({ received: Buffer.concat(received), error })))
    return Effect.sync(() => socket.destroy())
  }).pipe(Effect.timeoutOrElse({ duration: "10 seconds", orElse: () => Effect.fail(new SessionError({ cause: "the listener kept the connection open" })) }))

const hello = (nodeId: number) => encodeFrame({ _tag: "Hello", clusterId: CLUSTER, nodeId, role: "peer" })

describe("peer TLS", () => {
  it.live("the peer port takes only members holding a certificate of the cluster's CA, each as the node it names", () =>
    Effect.gen(function*() {
      const { ours, tls1, tls2, tls3, foreign2 } = yield* certificates
      // Keys private, the directory too.
      expect(statSync(ours.nodes[0]!.key).mode & 0o077).toBe(0)
      expect(statSync(join(ours.ca, "..")).mode & 0o077).toBe(0)
      const open = (nodeId: number, peerTls: PeerTls.PeerTls, peers: ReadonlyArray<{ nodeId: number; port: number }>) =>
        Transport.make<Ping>({
          clusterId: CLUSTER,
          nodeId,
          listen: { host: "127.0.0.1", port: 0 },
          peers: peers.map((p) => ({ nodeId: p.nodeId, host: "127.0.0.1", port: p.port })),
          messageSchema: Ping,
          tls: peerTls
        })
      // Node 2 is a configured peer of node 1 (its own address does not matter here).
      const one = yield* open(1, tls1, [{ nodeId: 2, port: 1 }])
      const port = one.address.port

      // Knowing the cluster id is not enough: a plain hello, TLS without a certificate, another CA's certificate.
      const plain = yield* session(port, hello(2))
      expect(plain.received.includes("HelloOk")).toBe(false)
      const noCert = yield* session(port, hello(2), { ca: tls1.ca, servername: "node-1" })
      expect(noCert.received.includes("HelloOk")).toBe(false)
      expect(noCert.error).toMatch(/certificate/i)
      const foreign = yield* session(port, hello(2), { ...PeerTls.clientOptions(foreign2, 1), ca: tls1.ca })
      expect(foreign.received.includes("HelloOk")).toBe(false)
      // A member's certificate does not let it speak as another member.
      const impostor = yield* session(port, hello(2), PeerTls.clientOptions(tls3, 1))
      expect(impostor.received.includes("HelloOk")).toBe(false)
      expect(impostor.received.toString("latin1")).toContain("certificate is node 3's")

      // A dialer checks whom it reached: node 3's listener is not node 1.
      const three = yield* open(3, tls3, [])
      const wrong = yield* session(three.address.port, hello(2), PeerTls.clientOptions(tls2, 1))
      expect(wrong.error).toMatch(/node-1|altnames|Hostname/i)

      // The real member gets through, and its messages arrive.
      const two = yield* open(2, tls2, [{ nodeId: 1, port }])
      yield* LocalCluster.waitFor("node 2's TLS link to node 1", Effect.map(two.reachable, (r) => r.get(1) === true), 10_000)
      yield* two.send(1, { _tag: "Ping", n: 7 })
      const got = yield* Queue.take(one.inbound).pipe(Effect.timeout("10 seconds"))
      expect(got).toMatchObject({ _tag: "Peer", from: 2, message: { n: 7 } })
    }).pipe(Effect.scoped), { timeout: 60_000 })

  it.live("a cluster with TLS between agents: writes through a replica's RW port go over TLS to the master; a forward port takes no plain connection, MariaDB takes PROXY headers from the agent only, a rebuild's copy goes over HTTPS with node certificates, and `certs` makes the files", () =>
    Effect.gen(function*() {
      const { c } = yield* clusterWithTable({ nodes: 3, database: true, tls: true }, "d.t", 60_000)
      const master = yield* waitForMaster(c, "the master")
      const replica = c.nodes.find((n) => n.nodeId !== master.nodeId)!
      yield* Effect.scoped(Effect.gen(function*() {
        const w = yield* startWriter(replica.rwPort!, "d.t", 1_000_000)
        yield* writesFlowing([w], "writes through a replica's RW port", 60_000)
      }))
      // A PROXY header over plain TCP from a member's address: closed in the TLS handshake, MariaDB never greets it.
      const forged = yield* session(master.forwardRwPort!, Buffer.from("PROXY TCP4 10.9.9.9 127.0.0.1 5555 3306\r\n"))
      expect(forged.received.toString("latin1")).not.toMatch(/MariaDB/)
      const peerPlain = yield* session(master.peerPort, hello(replica.nodeId))
      expect(peerPlain.received.includes("HelloOk")).toBe(false)
      // MariaDB takes PROXY headers from the agent only (its Unix socket): through the RW port
      // it sees this client's own address and port; over its TCP port a header is refused.
      const seen = yield* Effect.promise(async () => {
        const conn = await mysql.createConnection({ host: "127.0.0.1", port: master.rwPort!, user: APP_USER, password: APP_PASSWORD })
        const [rows] = await conn.query("SELECT HOST AS h FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()")
        const local = (conn as unknown as { connection: { stream: net.Socket } }).connection.stream.localPort
        await conn.end()
        return { host: (rows as Array<{ h: string }>)[0]!.h, local }
      })
      expect(seen.host).toBe(`127.0.0.1:${seen.local}`)
      const faked = yield* Effect.promise(() =>
        mysql.createConnection({
          user: APP_USER,
          password: APP_PASSWORD,
          stream: () => {
            const s = net.connect({ host: "127.0.0.1", port: master.mariadb!.port })
            s.write("PROXY TCP4 10.9.9.9 127.0.0.1 5555 3306\r\n")
            return s
          }
        }).then((c) => (c.destroy(), "connected"), (e: Error) => e.message)
      )
      expect(faked).toMatch(/Proxy header is not accepted/)
      // Every row image is under dataDir, which no other local user may enter; the config holds the admin token.
      // As root, mariadbd runs as `mysql`, and dataDir lets only that group pass (not list).
      const server = serverUser()
      expect(statSync(join(master.dir, "data")).mode & 0o077).toBe(server === undefined ? 0 : 0o010)
      if (server !== undefined) expect(statSync(join(master.dir, "data")).gid).toBe(server.gid)
      expect(statSync(master.configPath).mode & 0o077).toBe(0)
      expect(uidOf(mariadbPid(master))).toBe(server?.uid ?? process.getuid!())
      // A copy of the database goes only over mutual TLS: plain HTTP with the token is refused,
      // and a rebuild (the node asks a healthy peer's admin port over HTTPS) works.
      const plainCopy = yield* Effect.promise(() =>
        fetch(`http://${master.host}:${master.adminPort}/backup`, { headers: { authorization: `Bearer ${c.adminToken}` } }).then(async (r) => ({ status: r.status, body: await r.text() })))
      expect(plainCopy.status, plainCopy.body).toBe(403)
      expect(plainCopy.body).toContain("mutual TLS only")
      const rebuild = yield* runCli(["rebuild", "--config", replica.configPath])
      expect(rebuild.code, rebuild.out).toBe(0)
      yield* LocalCluster.waitFor("the replica to be rebuilt from a peer's copy", Effect.sync(() => /rebuild: copied \d+ MB from node \d/.test(replica.output())), 60_000)
      yield* LocalCluster.waitFor("the rebuild to be done", Effect.sync(() => /rebuild done: \d+ transactions replayed/.test(replica.output())), 60_000)
      // The rebuilt datadir (unpacked by the agent) is the server user's too, and it runs as that user.
      yield* LocalCluster.waitFor("the rebuilt replica's mariadbd", Effect.sync(() => {
        try {
          return uidOf(mariadbPid(replica)) === (server?.uid ?? process.getuid!())
        } catch {
          return false
        }
      }), 30_000)
      if (server !== undefined) expect(statSync(join(dirname(replica.mariadb!.pidFile), "data", "mysql")).uid).toBe(server.uid)
      // Nothing broke: the master still serves.
      expect((yield* waitForMaster(c, "the master after the probes")).nodeId).toBe(master.nodeId)

      // A change asked with --config goes over HTTPS with that node's certificate.
      const moved = yield* runCli(["switchover", "--config", replica.configPath])
      expect(moved.code, moved.out).toBe(0)
      expect(moved.out).toContain("done: node")

      const dir = join(c.dir, "certs-cli")
      const made = yield* runCli(["certs", "--out", dir, "--nodes", "1,2", "--hosts", "127.0.0.1,127.0.0.2", "--cluster", "x"])
      expect(made.code, made.out).toBe(0)
      const loaded = yield* PeerTls.load({ ca: join(dir, "ca.crt"), cert: join(dir, "node-2.crt"), key: join(dir, "node-2.key") }, 2)
      expect(loaded.nodeId).toBe(2)
      const misnamed = yield* Effect.flip(PeerTls.load({ ca: join(dir, "ca.crt"), cert: join(dir, "node-2.crt"), key: join(dir, "node-2.key") }, 1))
      expect(misnamed.message).toContain("not node-1")
    }).pipe(Effect.scoped), { timeout: 180_000 })
})

