/** The pure parts behind the operator's tools: cluster health, history, lag, user grants, refusals. */
import { describe, expect, it } from "@effect/vitest"
import { Result } from "effect"
import { clusterHealth, isPrimary, replicaWithin } from "../src/domain/cluster/health.js"
import { History, LagClock } from "../src/domain/cluster/history.js"
import type { NodeStatus } from "../src/domain/cluster/nodeStatus.js"
import { checkNewUser, nativePasswordHashHex, parseGrant, userStatements } from "../src/domain/mysql/accounts.js"
import { RefusalSession } from "../src/domain/mysql/refusal.js"
import { Histogram } from "../src/domain/metrics/histogram.js"
import { Capability, buildHandshakeResponse41, parseErr, parseHandshakeV10 } from "../src/domain/mysql/protocol.js"
import { encodePackets, PacketDecoder } from "../src/domain/mysql/packet.js"

const node = (nodeId: number, role: "master" | "replica", database: Partial<NonNullable<NodeStatus["database"]>> = {}, extra: Partial<NodeStatus> = {}): NodeStatus =>
  ({
    clusterId: "c",
    nodeId,
    role,
    master: 1,
    epoch: 3,
    leaseRemainingMs: role === "master" ? 900 : 0,
    paxos: { role: "follower", chosenUpTo: 10, lastChosenInstance: 9 },
    appliedInstance: 10,
    lastGtid: "0-1-5",
    database: { role, localGtid: "0-1-5", lag: 0, lagSeconds: 0, up: true, diverged: null, replicationError: null, rebuild: null, ...database },
    membership: "voter",
    members: [1, 2, 3].map((id) => ({ nodeId: id, host: "h", port: 1, adminPort: 2, reachable: true, voter: true })),
    ...extra
  }) as NodeStatus

const report = (s: NodeStatus) => ({ nodeId: s.nodeId, address: `h:${s.nodeId}`, status: s })

describe("cluster health", () => {
  it("0 with a serving master and healthy members; 1 degraded; 2 without a serving master", () => {
    expect(clusterHealth([report(node(1, "master")), report(node(2, "replica")), report(node(3, "replica"))]).code).toBe(0)
    const down = clusterHealth([report(node(1, "master")), report(node(2, "replica")), { nodeId: 3, address: "h:3", error: "ECONNREFUSED" }])
    expect(down).toMatchObject({ code: 1, problems: ["node 3: DOWN (ECONNREFUSED)"] })
    expect(clusterHealth([report(node(1, "master")), report(node(2, "replica", { diverged: "extra 0-2-9" }))]).problems).toEqual(["node 2: database diverged: extra 0-2-9"])
    expect(clusterHealth([report(node(1, "master")), report(node(2, "replica", { lag: 900, lagSeconds: 45 }))]).problems[0]).toMatch(/45 s behind/)
    // A lease holder whose database is still promoting does not serve writes yet.
    expect(clusterHealth([report(node(1, "master", { role: "promoting" })), report(node(2, "replica"))]).code).toBe(2)
    expect(clusterHealth([report(node(1, "replica")), report(node(2, "replica"))])).toMatchObject({ code: 2, summary: expect.stringMatching(/no master/) })
    expect(clusterHealth([{ nodeId: null, address: "x:1", error: "timeout" }]).summary).toMatch(/no member answers/)
  })

  it("a partition: a member that answers but one peer does not reach", () => {
    const cut = node(2, "replica", {}, { members: [1, 2, 3].map((id) => ({ nodeId: id, host: "h", port: 1, adminPort: 2, reachable: id !== 3, voter: true })) })
    expect(clusterHealth([report(node(1, "master")), report(cut), report(node(3, "replica"))]).problems).toEqual(["node 2: does not reach node 3"])
  })

  it("probes: primary and replica within a bound", () => {
    expect(isPrimary(node(1, "master"))).toBe(true)
    expect(isPrimary(node(1, "master", { up: false }))).toBe(false)
    expect(replicaWithin(node(2, "replica", { lag: 5, lagSeconds: 2 }), {})).toBe(true)
    expect(replicaWithin(node(2, "replica", { lag: 5, lagSeconds: 2 }), { maxLag: 4 })).toBe(false)
    expect(replicaWithin(node(2, "replica", { lag: 5, lagSeconds: 2 }), { maxLagSeconds: 2 })).toBe(true)
    expect(replicaWithin(node(2, "replica", { rebuild: { reason: "r", elapsedS: 1, appliedTxns: 0, targetTxns: 9, percent: 0, txnsPerS: 0, etaS: null } }), {})).toBe(false)
    // Cut off from the majority, its lag reads 0 while its reads grow stale; removed, it serves no one.
    const alone = node(2, "replica", {}, { members: [1, 2, 3].map((id) => ({ nodeId: id, host: "h", port: 1, adminPort: 2, reachable: id === 2, voter: true })) })
    expect(replicaWithin(alone, { maxLagSeconds: 10 })).toBe(false)
    expect(replicaWithin(node(2, "replica", {}, { membership: "not a member" }), {})).toBe(false)
    expect(clusterHealth([report(node(1, "master")), report(node(2, "replica", {}, { membership: "not a member" }))]).problems[0]).toMatch(/removed/)
  })
})

describe("history and lag", () => {
  it("commits per second from the GTID sequence; latency quantiles over each interval only", () => {
    const h = new History(5_000, 3)
    const latency = new Histogram()
    h.record({ t: 0, gtidSeq: 100, commitTotal: latency, lagTxns: 0 })
    for (let i = 0; i < 50; i++) latency.record(2)
    h.record({ t: 5_000, gtidSeq: 150, commitTotal: latency, lagTxns: 1 })
    h.record({ t: 10_000, gtidSeq: 150, commitTotal: latency, lagTxns: 0 })
    const [a, b] = h.samples()
    expect(a).toMatchObject({ commitsPerS: 10, lagTxns: 1 })
    expect(a!.commitP50Ms).toBeCloseTo(2, 0)
    expect(b).toMatchObject({ commitsPerS: 0, commitP50Ms: null, commitP99Ms: null })
    for (let t = 15_000; t <= 30_000; t += 5_000) h.record({ t, gtidSeq: 150, commitTotal: latency, lagTxns: 0 })
    expect(h.samples()).toHaveLength(3)
  })

  it("lag in seconds: since the first transaction the replica lacks was seen chosen", () => {
    const c = new LagClock()
    c.observe(10, 1_000)
    c.observe(20, 3_000)
    expect(c.secondsBehind(5, 4_000)).toBe(3)
    expect(c.secondsBehind(12, 4_000)).toBe(1)
    expect(c.secondsBehind(20, 4_000)).toBe(0)
  })
})

describe("user grants", () => {
  it("database-level privileges and read-only global ones; nothing that passes read_only", () => {
    expect(parseGrant("select, insert ON shop.*")).toEqual(Result.succeed({ privileges: ["SELECT", "INSERT"], on: "shop.*" }))
    expect(Result.isSuccess(parseGrant("ALL ON `my db`.orders"))).toBe(true)
    expect(Result.isSuccess(parseGrant("PROCESS, REPLICATION CLIENT ON *.*"))).toBe(true)
    expect(Result.getFailure(parseGrant("ALL ON *.*"))).toMatchObject({ _tag: "Some", value: expect.stringMatching(/READ ONLY ADMIN/) })
    expect(Result.getFailure(parseGrant("SUPER ON *.*"))).toMatchObject({ _tag: "Some", value: expect.stringMatching(/not offered/) })
    expect(Result.getFailure(parseGrant("PROCESS ON shop.*"))).toMatchObject({ _tag: "Some", value: expect.stringMatching(/global privilege/) })
    expect(Result.isFailure(parseGrant("SELECT ON shop.*; DROP DATABASE x"))).toBe(true)
    expect(Result.isFailure(parseGrant("SELECT ON `a`b`.*"))).toBe(true)
    // The server's own schemas, and wildcards that reach them, are refused; _ is taken literally.
    for (const bad of ["ALL ON mysql.*", "INSERT, UPDATE ON mysql.global_priv", "ALL ON `%`.*", "ALL ON `m%`.*", "SELECT ON *.*", "SELECT ON `sys`.*"]) {
      expect(Result.isFailure(parseGrant(bad)), bad).toBe(true)
    }
    expect(parseGrant("ALL ON app_db.*")).toEqual(Result.succeed({ privileges: ["ALL"], on: "`app\\_db`.*" }))
    expect(parseGrant("SELECT ON `a_b`.orders_2024")).toEqual(Result.succeed({ privileges: ["SELECT"], on: "`a\\_b`.orders_2024" }))
  })

  it("refuses the accounts the cluster and MariaDB use themselves, and quotes in names", () => {
    const hash = nativePasswordHashHex("x")
    for (const name of ["root", "ROOT", "mariadb.sys", "phxmaria_repl", "agent", "o'neil", "a\\b"]) {
      const r = checkNewUser({ name, host: "%", hash, grants: [], update: true, reserved: ["agent"] })
      expect(Result.isFailure(r), name).toBe(true)
    }
  })

  it("checks every field at once, and makes the statements with the hash as a parameter", () => {
    const bad = checkNewUser({ name: "", host: "a b", hash: "secret", grants: ["SUPER ON *.*"], update: false })
    expect(Result.isFailure(bad) ? bad.failure : []).toHaveLength(4)
    const hash = nativePasswordHashHex("a-long-password")
    expect(hash).toMatch(/^\*[0-9A-F]{40}$/)
    const ok = checkNewUser({ name: "app", host: "10.0.0.%", hash, grants: ["ALL ON app.*"], update: true })
    if (Result.isFailure(ok)) return expect.fail(ok.failure.join("; "))
    expect(userStatements(ok.success)).toEqual([
      { sql: "CREATE USER IF NOT EXISTS ?@? IDENTIFIED BY PASSWORD ?", params: ["app", "10.0.0.%", hash] },
      { sql: "ALTER USER ?@? IDENTIFIED BY PASSWORD ?", params: ["app", "10.0.0.%", hash] },
      { sql: "GRANT ALL ON app.* TO ?@?", params: ["app", "10.0.0.%"] }
    ])
  })
})

describe("refusal after a greeting", () => {
  const refusal = { code: 1105, sqlState: "08004", message: "no master available" }
  const salt = new Uint8Array(20).fill(65)
  const login = (seq: number, ssl: boolean) =>
    encodePackets(seq, buildHandshakeResponse41({ username: "u", authResponse: new Uint8Array(20), ...(ssl ? { capabilities: Capability.Protocol41 | Capability.Ssl | Capability.SecureConnection } : {}) })).bytes

  it("greets like a MariaDB, then answers the login with the ERR (its sequence + 1)", () => {
    const s = new RefusalSession(refusal, false)
    const greeting = new PacketDecoder().push(s.greeting(salt))
    const hello = Result.getOrThrow(parseHandshakeV10(Result.getOrThrow(greeting)[0]!.payload))
    expect(hello.serverVersion).toMatch(/^5\.5\.5-/)
    expect(hello.capabilities & Capability.Ssl).toBe(0)
    const steps = s.push(login(1, false))
    expect(steps).toHaveLength(1)
    const answer = steps[0]!
    if (answer._tag !== "Answer") return expect.fail(answer._tag)
    const [packet] = Result.getOrThrow(new PacketDecoder().push(answer.bytes))
    expect(packet!.sequenceId).toBe(2)
    expect(Result.getOrThrow(parseErr(packet!.payload))).toMatchObject({ code: 1105, sqlState: "08004", message: "no master available" })
    expect(s.push(login(1, false))).toEqual([])
  })

  it("offers TLS when asked to; after the SSL request the login comes inside it; a huge first packet is no login", () => {
    const s = new RefusalSession(refusal, true)
    expect(Result.getOrThrow(parseHandshakeV10(Result.getOrThrow(new PacketDecoder().push(s.greeting(salt)))[0]!.payload)).capabilities & Capability.Ssl).not.toBe(0)
    const sslRequest = login(1, true).subarray(0, 4 + 32)
    sslRequest[0] = 32
    const tail = Uint8Array.of(0x16, 0x03, 0x01)
    const joined = new Uint8Array(sslRequest.length + tail.length)
    joined.set(sslRequest)
    joined.set(tail, sslRequest.length)
    expect(s.push(joined)).toEqual([{ _tag: "StartTls", rest: tail }])
    const steps = s.push(login(2, false))
    expect(steps[0]?._tag).toBe("Answer")
    const huge = new RefusalSession(refusal, false)
    expect(huge.push(Uint8Array.of(0xff, 0xff, 0xff, 1))[0]).toMatchObject({ _tag: "Close" })
  })
})
