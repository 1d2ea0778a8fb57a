import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { execFile } from "node:child_process"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { adminTokenOf, decodeNodeConfig, loadNodeConfig } from "../src/config/NodeConfig.js"

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
      expect(yield* refused({ sync_binlog: 0, max_connections: 500 })).toMatch(/may not set sync_binlog:/)
      for (const key of ["rpl-semi-sync-master-timeout", "loose-init-rpl-role", "BIND_ADDRESS", "innodb_flush_log_at_trx", "skip-log-bin", "proxy_protocol_networks", "enforce-storage-engine"]) {
        expect(yield* refused({ [key]: 1 })).toContain(`may not set ${key}`)
      }
      // No Paxos clients next to a database: a client could propose binlog entries.
      const clients = yield* decodeNodeConfig({ ...withExtra({}), paxos: { acceptClients: true } }).pipe(Effect.flip)
      expect(clients.message).toMatch(/paxos.acceptClients is refused with mariadb/)
      // Tuning is still free.
      const ok = yield* decodeNodeConfig(withExtra({ innodb_buffer_pool_size: "1G", max_connections: 500, "character-set-server": "utf8mb4" }))
      expect(ok.mariadb?.extraConfig?.max_connections).toBe(500)
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
      expect(yield* message({ tokenFile: short })).toMatch(/at least 16 characters/)
      expect(adminTokenOf(yield* decodeNodeConfig(good))).toBeUndefined()
      // A /status that needs the token needs a token.
      expect(yield* message({ openStatus: false })).toMatch(/openStatus false needs admin.token/)
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
      expect(e1.message).toContain(`["members"][0]["port"]`)
      const e2 = yield* Effect.flip(loadNodeConfig(yield* withFile("n.json", JSON.stringify({ ...good, nodeId: 9 }))))
      expect(e2.message).toContain("nodeId 9 is not among members")
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
      expect(result.stderr).toContain(`["lease"]["leaseMs"]`)
    }))
})
