import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { execFile } from "node:child_process"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { adminTokenOf, decodeNodeConfig, loadNodeConfig } from "../src/config/NodeConfig.js"
import { defaultPaxosConfig } from "../src/domain/paxos/core.js"
import { closestName } from "../src/domain/suggest.js"
import { AGENT_CONNECTIONS, defaultBufferPoolMb } from "../src/domain/mysql/serverOptions.js"
import { managedServerConfig, managedServerSizing } from "../src/services/database/LocalMariaDb.js"
import { totalmem } from "node:os"

const withFile = (name: string, text: string) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const dir = mkdtempSync(join(tmpdir(), "phxmaria-config-"))
      writeFileSync(join(dir, name), text)
      return join(dir, name)
    }),
    (path) => Effect.sync(() => rmSync(join(path, ".."), { recursive: true, force: true }))
  )

const good = {
  clusterId: "c1",
  nodeId: 1,
  dataDir: "/tmp/x",
  members: [{ nodeId: 1, host: "127.0.0.1", port: 7001, adminPort: 7101 }],
  lease: { leaseMs: 3000 }
}

/** `good` with a database: proxy ports on the member, a managed MariaDB. */
const withDb = (mariadb: Record<string, unknown> = {}, rest: Record<string, unknown> = {}) => ({
  ...good,
  members: [{ ...good.members[0], rwPort: 3301, roPort: 3401, forwardRwPort: 3501, forwardRoPort: 3601 }],
  mariadb: { port: 3306, binlogServerPort: 3307, ...mariadb },
  ...rest
})

/** The error's message for a config that must be refused. */
const refusal = (input: unknown) => decodeNodeConfig(input).pipe(Effect.flip, Effect.map((e) => e.message))

describe("node config", () => {
  it.effect("refuses extraConfig keys that override a safety setting, in any spelling mariadbd accepts, and names them", () =>
    Effect.gen(function*() {
      const withExtra = (extraConfig: Record<string, string | number | boolean>) => ({
        ...good,
        members: [{ ...good.members[0], rwPort: 1, roPort: 2, forwardRwPort: 3, forwardRoPort: 4 }],
        mariadb: { port: 3306, binlogServerPort: 3307, extraConfig }
      })
      const refused = (extra: Record<string, string | number | boolean>) =>
        decodeNodeConfig(withExtra(extra)).pipe(Effect.flip, Effect.map((e) => e.message))
      expect(yield* refused({ sync_binlog: 0, wait_timeout: 500 })).toMatch(/^mariadb\.extraConfig\.sync_binlog: may not set sync_binlog:/)
      for (const key of ["rpl-semi-sync-master-timeout", "loose-init-rpl-role", "BIND_ADDRESS", "innodb_flush_log_at_trx", "skip-log-bin", "proxy_protocol_networks", "enforce-storage-engine"]) {
        expect(yield* refused({ [key]: 1 })).toContain(`mariadb.extraConfig.${key}: may not set ${key}`)
      }
      // The settings with a key of their own, in any spelling: the message names the key to use.
      expect(yield* refused({ innodb_buffer_pool_size: "1G" })).toContain("may not set innodb_buffer_pool_size: use mariadb.bufferPoolMb")
      expect(yield* refused({ "max-connections": 500 })).toContain("may not set max-connections: use mariadb.maxConnections")
      expect(yield* refused({ "character-set-server": "utf8mb4" })).toContain("use mariadb.characterSet")
      expect(yield* refused({ "loose-collation_server": "utf8mb4_bin" })).toContain("use mariadb.collation")
      // Nothing may add a line of its own to my.cnf (past every check above).
      expect(yield* refused({ wait_timeout: "60\nsync_binlog=0" })).toContain("mariadb.extraConfig.wait_timeout: not a my.cnf line")
      expect(yield* refused({ "a\nsync_binlog": 0 })).toContain("not a my.cnf line")
      // No Paxos clients next to a database: a client could propose binlog entries.
      const clients = yield* decodeNodeConfig({ ...withExtra({}), paxos: { acceptClients: true } }).pipe(Effect.flip)
      expect(clients.message).toMatch(/paxos.acceptClients: refused with mariadb/)
      // Tuning is still free.
      const ok = yield* decodeNodeConfig(withExtra({ innodb_log_file_size: "1G", wait_timeout: 500, "skip-name-resolve": true }))
      expect(ok.mariadb?.extraConfig?.wait_timeout).toBe(500)
    }))

  it.effect("takes the admin token inline or from a file, not both, and refuses one under 16 characters", () =>
    Effect.gen(function*() {
      const message = (admin: unknown) => decodeNodeConfig({ ...good, admin }).pipe(Effect.flip, Effect.map((e) => e.message))
      expect(yield* message({ token: "short" })).toMatch(/admin/)
      const file = yield* withFile("token", "  0123456789abcdef0123\n")
      expect(yield* message({ token: "0123456789abcdef", tokenFile: file })).toMatch(/not both/)
      expect(yield* message({ tokenFile: `${file}.missing` })).toMatch(/admin.tokenFile/)
      const inline = yield* decodeNodeConfig({ ...good, admin: { token: "0123456789abcdef" } })
      expect(adminTokenOf(inline)).toBe("0123456789abcdef")
      const fromFile = yield* decodeNodeConfig({ ...good, admin: { tokenFile: file } })
      expect(adminTokenOf(fromFile)).toBe("0123456789abcdef0123")
      const short = yield* withFile("short", "abc\n")
      expect(yield* message({ tokenFile: short })).toMatch(/^admin\.tokenFile: .*at least 16 characters/)
      expect(adminTokenOf(yield* decodeNodeConfig(good))).toBeUndefined()
      // A /status that needs the token needs a token.
      expect(yield* message({ openStatus: false })).toMatch(/^admin\.openStatus: false needs admin.token/)
      expect((yield* decodeNodeConfig({ ...good, admin: { token: "0123456789abcdef", openStatus: false } })).admin?.openStatus).toBe(false)
    }).pipe(Effect.scoped))

  it.effect("reads JSON and YAML", () =>
    Effect.gen(function*() {
      const json = yield* loadNodeConfig(yield* withFile("n.json", JSON.stringify(good)))
      const yaml = yield* loadNodeConfig(yield* withFile("n.yaml", [
        "clusterId: c1",
        "nodeId: 1",
        "dataDir: /tmp/x",
        "members:",
        "  - { nodeId: 1, host: 127.0.0.1, port: 7001, adminPort: 7101 }",
        "lease:",
        "  leaseMs: 3000"
      ].join("\n")))
      expect(yaml).toEqual(json)
    }))

  it.effect("names the bad field", () =>
    Effect.gen(function*() {
      const bad = { ...good, members: [{ ...good.members[0], port: "x" }] }
      const e1 = yield* Effect.flip(loadNodeConfig(yield* withFile("n.json", JSON.stringify(bad))))
      expect(e1.message).toMatch(/^members\[0\]\.port: Expected /)
      const e2 = yield* Effect.flip(loadNodeConfig(yield* withFile("n.json", JSON.stringify({ ...good, nodeId: 9 }))))
      expect(e2.message).toBe("nodeId: node 9 is not among members (1)")
      const e3 = yield* Effect.flip(loadNodeConfig(yield* withFile("n.yaml", "clusterId: [unclosed")))
      expect(e3.message).toContain("not valid YAML")
    }))

  it.live("an invalid config makes `node` exit non-zero with a message naming the field", () =>
    Effect.gen(function*() {
      const path = yield* withFile("n.json", JSON.stringify({ ...good, lease: { leaseMs: "long" } }))
      const result = yield* Effect.promise(() =>
        new Promise<{ code: number | null; stderr: string }>((resolve) =>
          execFile(process.execPath, [join(process.cwd(), "dist", "main.js"), "node", "--config", path], (error, _out, stderr) =>
            resolve({ code: error === null ? 0 : (error.code as number), stderr }))))
      expect(result.code).not.toBe(0)
      expect(result.stderr).toContain("lease.leaseMs: Expected")
    }))

  it.effect("refuses unknown keys at every level, naming the path and the key meant", () =>
    Effect.gen(function*() {
      // The typo that ran managed mode against a server meant to be attached.
      expect(yield* refusal(withDb({ mdoe: "attach" }))).toBe("mariadb.mdoe: unknown key (did you mean mode?)")
      expect(yield* refusal({ ...good, leese: { leaseMs: 3000 } })).toBe("leese: unknown key (did you mean lease?)")
      const cases: ReadonlyArray<readonly [unknown, string]> = [
        [{ ...good, members: [{ ...good.members[0], hots: "10.0.0.1" }] }, "members[0].hots: unknown key (did you mean host?)"],
        [withDb({ ssl: { cert: "/c", key: "/k", requier: true } }), "mariadb.ssl.requier: unknown key (did you mean require?)"],
        [withDb({}, { proxy: { listenhost: "127.0.0.1" } }), "proxy.listenhost: unknown key (did you mean listenHost?)"],
        [{ ...good, lease: { leaseMs: 3000, marginMS: 100 } }, "lease.marginMS: unknown key (did you mean marginMs?)"],
        [{ ...good, paxos: { maxInFlight: 4 } }, "paxos.maxInFlight: unknown key (did you mean maxInflight?)"],
        [{ ...good, log: { retainMB: 10 } }, "log.retainMB: unknown key (did you mean retainMb?)"],
        [{ ...good, admin: { tokenfile: "/x" } }, "admin.tokenfile: unknown key (did you mean tokenFile?)"],
        [{ ...good, rebuild: { atuo: false } }, "rebuild.atuo: unknown key (did you mean auto?)"],
        [{ ...good, tls: { ca: "/a", cert: "/c", key: "/k", cas: "/b" } }, "tls.cas: unknown key (did you mean ca?)"]
      ]
      for (const [input, expected] of cases) expect(yield* refusal(input)).toContain(expected)
      // Nothing close: the keys it may be.
      expect(yield* refusal({ ...good, rebuild: { zzz: 1 } })).toBe("rebuild.zzz: unknown key (known here: auto)")
      // extraConfig is MariaDB's namespace: any option name is taken.
      expect((yield* decodeNodeConfig(withDb({ extraConfig: { some_future_option: 1 } }))).mariadb?.extraConfig).toEqual({ some_future_option: 1 })
      expect(closestName("mode", ["mode", "port"])).toBeUndefined()
      expect(closestName("pont", ["port", "post"])).toBeUndefined() // as close to both: no guess
      expect(closestName("prot", ["port", "post"])).toBe("port") // letters swapped: one edit
    }))

  it.effect("reports every problem at once, one line each, schema and cross-field checks together", () =>
    Effect.gen(function*() {
      const message = yield* refusal({
        ...good,
        nodeId: 9,
        members: [{ nodeId: 1, host: "bad host!", port: 0, adminPort: 7101, rwPort: 3301 }],
        mariadb: { port: 3306, binlogServerPort: 3307, mdoe: "attach", extraConfig: { sync_binlog: 0 } },
        lease: { leaseMs: 1000, marginMs: 600 },
        admin: { token: "0123456789abcdef", tokenFile: "/nowhere", openStatus: "no" }
      })
      const lines = message.split("\n")
      expect(lines[0]).toBe(`${lines.length - 1} problems:`)
      for (const expected of [
        "- members[0].host: expected an IP address or a host name (RFC 1123), got \"bad host!\"",
        "- members[0].port: Expected a value between 1 and 65535",
        "- mariadb.mdoe: unknown key (did you mean mode?)",
        "- admin.openStatus: Expected boolean",
        "- nodeId: node 9 is not among members (1)",
        "- members[0]: with mariadb set, every member needs proxy ports: missing roPort, forwardRwPort, forwardRoPort",
        "- mariadb.extraConfig.sync_binlog: may not set sync_binlog",
        "- admin: give token or tokenFile, not both",
        "- admin.tokenFile: ",
        "- lease: need marginMs < leaseMs/2"
      ]) {
        expect(lines.some((l) => l.startsWith(expected)), `${expected} in\n${message}`).toBe(true)
      }
    }))

  it.effect("bounds every number, integers where integers are meant; the defaults lie inside", () =>
    Effect.gen(function*() {
      const bad: ReadonlyArray<readonly [unknown, string]> = [
        [{ ...good, members: [{ ...good.members[0], port: 0 }] }, "members[0].port: Expected a value between 1 and 65535"],
        [{ ...good, members: [{ ...good.members[0], adminPort: 65536 }] }, "members[0].adminPort: Expected a value between 1 and 65535"],
        [withDb({ port: 0 }), "mariadb.port: Expected a value between 1 and 65535"],
        [{ ...good, nodeId: 1_000_000, members: [{ ...good.members[0], nodeId: 1_000_000 }] }, "nodeId: Expected a value between 1 and 999999"],
        [{ ...good, members: [{ ...good.members[0], nodeId: 0 }] }, "members[0].nodeId: Expected a value between 1 and 999999"],
        [{ ...good, nodeId: 1.5 }, "nodeId: Expected an integer"],
        [{ ...good, paxos: { maxInflight: 0 } }, "paxos.maxInflight: Expected a value between 1 and 64"],
        [{ ...good, paxos: { maxInflight: 65 } }, "paxos.maxInflight: Expected a value between 1 and 64"],
        [{ ...good, paxos: { tickMs: 2.5 } }, "paxos.tickMs: Expected an integer"],
        [{ ...good, paxos: { proposeTimeoutMs: 50 } }, "paxos.proposeTimeoutMs: Expected a value between 100 and 600000"],
        [{ ...good, paxos: { batchMaxBytes: 100 } }, "paxos.batchMaxBytes: Expected a value between 1024 and 33554432"],
        [{ ...good, paxos: { batchMaxCount: 0 } }, "paxos.batchMaxCount: Expected a value between 1 and 65536"],
        [{ ...good, lease: { leaseMs: 100 } }, "lease.leaseMs: Expected a value between 200 and 60000"],
        [{ ...good, lease: { leaseMs: 3000, renewEveryMs: 0 } }, "lease.renewEveryMs: Expected a value between 1 and 60000"],
        [withDb({}, { proxy: { connectTimeoutMs: 0 } }), "proxy.connectTimeoutMs: Expected a value between 100 and 600000"],
        [withDb({}, { proxy: { maxConnections: 0 } }), "proxy.maxConnections: Expected a value between 1 and 100000"],
        [{ ...good, log: { retainMb: 0 } }, "log.retainMb: Expected a value between 1 and"],
        [{ ...good, log: { segmentMb: 2048 } }, "log.segmentMb: Expected a value between 1 and 1024"],
        [withDb({ maxTransactionMb: 0 }), "mariadb.maxTransactionMb: Expected a value between 1 and"],
        [withDb({ bufferPoolMb: 16 }), "mariadb.bufferPoolMb: Expected a value between 32 and"],
        [withDb({ maxConnections: 5 }), "mariadb.maxConnections: Expected a value between 10 and 100000"],
        [withDb({ bufferPoolMb: "1G" }), "mariadb.bufferPoolMb: Expected number"]
      ]
      for (const [input, expected] of bad) expect(yield* refusal(input)).toContain(expected)
      const d = defaultPaxosConfig(1, [1], 0)
      const tuned = yield* decodeNodeConfig({
        ...good,
        paxos: { batchMaxCount: d.batchMaxCount, batchMaxBytes: d.batchMaxBytes, maxInflight: d.maxInflight, tickMs: 25, proposeTimeoutMs: 10_000 }
      })
      expect(tuned.paxos?.maxInflight).toBe(4)
      expect((yield* decodeNodeConfig(withDb({}, { proxy: { connectTimeoutMs: 5000, maxConnections: 1000 } }))).proxy?.maxConnections).toBe(1000)
    }))

  it.effect("takes a host name or an IP address as a member's host, and refuses anything else", () =>
    Effect.gen(function*() {
      for (const host of ["localhost", "db-1.example.com", "node1", "10.0.0.1", "::1", "fe80::1", "0.0.0.0"]) {
        const config = yield* decodeNodeConfig({ ...good, members: [{ ...good.members[0], host }] })
        expect(config.members[0]!.host).toBe(host)
      }
      for (const host of ["", "bad host", "10.0.0.256", "-db.example.com", "db..example.com", "db_1.example.com", "http://db1", `${"a".repeat(64)}.com`]) {
        expect(yield* refusal({ ...good, members: [{ ...good.members[0], host }] })).toContain("members[0].host: expected an IP address or a host name")
      }
      expect(yield* refusal(withDb({}, { proxy: { listenHost: "not valid" } }))).toContain("proxy.listenHost: expected an IP address or a host name")
    }))

  it.effect("sizes the managed server: buffer pool, connections, character set and collation, with their defaults", () =>
    Effect.gen(function*() {
      const config = yield* decodeNodeConfig(withDb({ bufferPoolMb: 4096, maxConnections: 2000, characterSet: "latin1", collation: "latin1_bin" }))
      expect(config.mariadb).toMatchObject({ bufferPoolMb: 4096, maxConnections: 2000, characterSet: "latin1", collation: "latin1_bin" })
      // Defaults: half the machine's memory in 128 MiB steps, 1000 clients, utf8mb4 as Debian configures it.
      expect(defaultBufferPoolMb(16 * 1024 ** 3)).toBe(8192)
      expect(defaultBufferPoolMb(1000 * 1024 ** 2)).toBe(384)
      expect(defaultBufferPoolMb(100 * 1024 ** 2)).toBe(128)
      expect(managedServerSizing({})).toEqual({
        bufferPoolMb: defaultBufferPoolMb(totalmem()),
        maxConnections: 1000,
        characterSet: "utf8mb4",
        collation: "utf8mb4_general_ci"
      })
      // Another set keeps its own default collation unless one is given.
      expect(managedServerSizing({ characterSet: "latin1" }).collation).toBeUndefined()
      const cnf = managedServerConfig(3306, undefined, undefined, undefined, managedServerSizing({ bufferPoolMb: 256, maxConnections: 300 }))
      expect(cnf).toMatchObject({
        innodb_buffer_pool_size: "256M",
        max_connections: 300 + AGENT_CONNECTIONS,
        character_set_server: "utf8mb4",
        collation_server: "utf8mb4_general_ci"
      })
      // A collation belongs to its character set (utf8 is utf8mb3).
      expect(yield* refusal(withDb({ characterSet: "latin1", collation: "utf8mb4_bin" }))).toBe(
        "mariadb.collation: utf8mb4_bin is not a collation of the character set latin1"
      )
      expect(yield* refusal(withDb({ collation: "latin1_swedish_ci" }))).toContain("character set utf8mb4 (the default; set mariadb.characterSet)")
      yield* decodeNodeConfig(withDb({ characterSet: "utf8", collation: "utf8mb3_general_ci" }))
      yield* decodeNodeConfig(withDb({ characterSet: "binary", collation: "binary" }))
      expect(yield* refusal(withDb({ characterSet: "utf8mb4\nsync_binlog=0" }))).toContain("mariadb.characterSet: expected a MariaDB name")
      // The proxy must not promise more connections on one listener than MariaDB takes for clients.
      expect(yield* refusal(withDb({ maxConnections: 500 }))).toContain(
        "proxy.maxConnections: 1000 per listener (the default) is more than mariadb.maxConnections (500)"
      )
      yield* decodeNodeConfig(withDb({ maxConnections: 500 }, { proxy: { maxConnections: 500 } }))
      // Attached: the operator's server is sized by the operator; its character set may be set (SET GLOBAL).
      const attach = { mode: "attach", user: "agent", password: "x" }
      expect(yield* refusal(withDb({ ...attach, bufferPoolMb: 1024, maxConnections: 100 }))).toBe([
        "2 problems:",
        "- mariadb.bufferPoolMb: managed mode only: an attached server's innodb_buffer_pool_size is the operator's",
        "- mariadb.maxConnections: managed mode only: an attached server's max_connections is the operator's"
      ].join("\n"))
      expect((yield* decodeNodeConfig(withDb({ ...attach, characterSet: "utf8mb4" }))).mariadb?.characterSet).toBe("utf8mb4")
    }))
})
