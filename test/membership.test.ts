import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import mysql from "mysql2/promise"
import { requestRemoveMember } from "../src/client/StatusClient.js"
import * as LocalCluster from "../src/testing/LocalCluster.js"
import { APP_PASSWORD, APP_USER, checksum, clusterWithTable, idsOn, runCli, startWriter, statusOf, waitForMaster, writesFlowing } from "./support/dbCluster.js"

const TABLE = "d.t"


/** The error a client gets connecting to `port` (undefined: it connected). */
const connectError = (port: number) =>
  Effect.promise(async () => {
    try {
      const conn = await mysql.createConnection({ host: "127.0.0.1", port, user: APP_USER, password: APP_PASSWORD, connectTimeout: 2_000 })
      conn.destroy()
      return undefined
    } catch (e) {
      return e instanceof Error ? e.message : String(e)
    }
  })

describe("membership", () => {
  it.live("a cluster of one node (development) is its own majority: it serves writes, and refuses to remove its only voter", () =>
    Effect.gen(function*() {
      const { c, master: only } = yield* clusterWithTable({ nodes: 1, database: true, openStatus: false }, TABLE, 60_000)
      const w = yield* Effect.scoped(Effect.gen(function*() {
        const w = yield* startWriter(only.rwPort!, TABLE, 1_000_000)
        yield* LocalCluster.waitFor("writes to get through", Effect.sync(() => w.acked.length >= 20), 30_000)
        return w
      }))
      const ids = yield* idsOn(only, TABLE)
      expect(w.acked.filter((id) => !ids.has(id))).toEqual([])
      // The managed server runs utf8mb4 (the config's default): a table made with the defaults
      // takes a 4-byte character. LocalCluster keeps it small (32 MiB pool, 200 clients + the agent's 32).
      const server = yield* Effect.promise(async () => {
        const conn = await mysql.createConnection({ host: only.host, port: only.rwPort!, user: APP_USER, password: APP_PASSWORD, charset: "utf8mb4" })
        try {
          const [settings] = await conn.query(
            "SELECT @@character_set_server AS cs, @@collation_server AS co, @@max_connections AS mc, @@innodb_buffer_pool_size AS pool"
          )
          await conn.query("CREATE TABLE d.text (id INT PRIMARY KEY, s VARCHAR(10))")
          await conn.query("INSERT INTO d.text VALUES (1, ?)", ["\u{1F600}"])
          const [rows] = await conn.query("SELECT s, CHARSET(s) AS cs FROM d.text")
          return { settings, rows }
        } finally {
          conn.destroy()
        }
      })
      expect(server.settings).toEqual([{ cs: "utf8mb4", co: "utf8mb4_general_ci", mc: 232, pool: 32 * 1024 * 1024 }])
      expect(server.rows).toEqual([{ s: "\u{1F600}", cs: "utf8mb4" }])
      // Every call that changes something needs the admin token: none or a wrong one gets 401.
      const address = `${only.host}:${only.adminPort}`
      const statusWithout = yield* Effect.promise(() => fetch(`http://${address}/members/1`, { method: "DELETE" }).then((r) => r.status))
      expect(statusWithout).toBe(401)
      const noToken = yield* Effect.flip(requestRemoveMember(address, 1))
      expect(noToken.message).toMatch(/needs the cluster's admin token/)
      const wrongToken = yield* Effect.flip(requestRemoveMember({ address, token: `${c.adminToken}x` }, 1))
      expect(wrongToken.message).toMatch(/needs the cluster's admin token/)
      const refused = yield* Effect.flip(requestRemoveMember({ address, token: c.adminToken }, 1))
      expect(refused.message).toMatch(/master/)
      // With admin.openStatus false, /status needs the token too (the CLI sends it); /replica stays open.
      expect(yield* Effect.promise(() => fetch(`http://${address}/status`).then((r) => r.status))).toBe(401)
      expect(yield* Effect.promise(() => fetch(`http://${address}/status`, { headers: { authorization: `Bearer ${c.adminToken}` } }).then((r) => r.status))).toBe(200)
      expect(yield* Effect.promise(() => fetch(`http://${address}/replica`).then((r) => r.status))).toBe(503)
      const shown = yield* runCli(["status", "--admin", address, "--token", c.adminToken])
      expect(shown.code, shown.out).toBe(0)
      expect(shown.out).toMatch(/master/)
      const hidden = yield* runCli(["status", "--admin", address])
      expect(hidden.out).toMatch(/needs the admin token/)
    }).pipe(Effect.scoped), { timeout: 120_000 })

  it.live("3 -> 4 online under writes: a new node started with --join is added as a learner, catches up, and becomes a voter; a master can move to it; member replace swaps node 1 for a new node 5", () =>
    Effect.gen(function*() {
      const { c } = yield* clusterWithTable({ nodes: 3, database: true }, TABLE)
      const admin = c.nodes.map((n) => `${n.host}:${n.adminPort}`).join(",")
      const { node, member } = yield* c.addNode(4)
      const writer = yield* Effect.scoped(Effect.gen(function*() {
        const w = yield* startWriter(c.nodes[0]!.rwPort!, TABLE, 1_000_000)
        yield* LocalCluster.waitFor("writes to get through", Effect.sync(() => w.acked.length >= 20), 60_000)
        yield* node.start
        // Not a member yet: it serves nobody, and the log has not named it.
        const before = yield* statusOf(node)
        expect("error" in before ? before.error : before.membership).toBe("not a member")
        const added = yield* runCli([
          "member", "add", "--admin", admin, "--token", c.adminToken, "--id", "4", "--host", member.host, "--port", String(member.port),
          "--admin-port", String(member.adminPort), "--rw-port", String(member.rwPort!), "--ro-port", String(member.roPort!),
          "--forward-rw-port", String(member.forwardRwPort!), "--forward-ro-port", String(member.forwardRoPort!)
        ])
        expect(added.code, added.out).toBe(0)
        expect(added.out).toMatch(/is a learner/)
        expect(added.out).toContain("done: node 4 is a voter")
        const from = w.acked.length
        yield* LocalCluster.waitFor("writes after the add", Effect.sync(() => w.acked.length >= from + 20), 60_000)
        return w
      }))
      const all = [...c.nodes, node]
      for (const n of all) {
        const s = yield* statusOf(n)
        expect("error" in s ? s.error : s.members.map((m) => `${m.nodeId}:${m.voter}`).sort()).toEqual(["1:true", "2:true", "3:true", "4:true"])
      }
      yield* LocalCluster.waitFor("every node to hold the same rows", Effect.map(Effect.forEach(all, (n) => checksum(n, TABLE)), (sums) => new Set(sums).size === 1), 60_000)
      const ids = yield* idsOn(node, TABLE)
      expect(writer.acked.filter((id) => !ids.has(id))).toEqual([])
      // Provisioned by a copy of a peer's database, not by replaying the whole log.
      expect(node.output()).toMatch(/rebuild: copied \d+ MB from node \d/)
      // The new voter can take the master role.
      const moved = yield* runCli(["switchover", "--admin", admin, "--token", c.adminToken, "--to", "4"])
      expect(moved.code, moved.out).toBe(0)
      expect(moved.out).toContain("done: node 4 is master")
      yield* LocalCluster.waitFor("node 4 to serve as master", Effect.map(statusOf(node), (s) => !("error" in s) && s.database?.role === "master"), 30_000)

      // Replace node 1 by a new machine, node 5, in one command (added and caught up first, then node 1 goes).
      const five = yield* c.addNode(5)
      yield* five.node.start
      const m5 = five.member
      const replaced = yield* runCli([
        "member", "replace", "--admin", admin, "--token", c.adminToken, "--id", "1", "--new-id", "5", "--host", m5.host, "--port", String(m5.port),
        "--admin-port", String(m5.adminPort), "--rw-port", String(m5.rwPort!), "--ro-port", String(m5.roPort!),
        "--forward-rw-port", String(m5.forwardRwPort!), "--forward-ro-port", String(m5.forwardRoPort!)
      ])
      expect(replaced.code, replaced.out).toBe(0)
      expect(replaced.out).toContain("done: node 5 is a voter")
      expect(replaced.out).toContain("done: node 1 is no longer a member")
      const after = [c.nodes[1]!, c.nodes[2]!, node, five.node]
      yield* LocalCluster.waitFor("the four members to hold the same rows", Effect.map(Effect.forEach(after, (n) => checksum(n, TABLE)), (sums) => new Set(sums).size === 1), 60_000)
      const s5 = yield* statusOf(five.node)
      expect("error" in s5 ? s5.error : s5.members.map((m) => `${m.nodeId}:${m.voter}`).sort()).toEqual(["2:true", "3:true", "4:true", "5:true"])
      expect(yield* connectError(c.nodes[0]!.rwPort!)).toMatch(/removed from the cluster/)

      // And back to three: 3 -> 4 -> 5 (during the replace) -> 4 -> 3.
      const back = yield* runCli(["member", "remove", "--admin", `${node.host}:${node.adminPort}`, "--token", c.adminToken, "--id", "2"])
      expect(back.code, back.out).toBe(0)
      const three = [c.nodes[2]!, node, five.node]
      yield* LocalCluster.waitFor("the three members to hold the same rows", Effect.map(Effect.forEach(three, (n) => checksum(n, TABLE)), (sums) => new Set(sums).size === 1), 60_000)
      const s3 = yield* statusOf(node)
      expect("error" in s3 ? s3.error : s3.members.map((m) => m.nodeId).sort()).toEqual([3, 4, 5])
    }).pipe(Effect.scoped), { timeout: 300_000 })

  it.live("seven members elect one master and keep it (a log-only cluster)", () =>
    Effect.gen(function*() {
      const c = yield* LocalCluster.make({ nodes: 7 })
      const masters = Effect.map(Effect.forEach(c.nodes, statusOf), (ss) => ss.filter((s) => !("error" in s) && s.role === "master").length)
      yield* LocalCluster.waitFor("one master among seven", Effect.map(masters, (n) => n === 1), 60_000)
      const [s] = yield* Effect.forEach([c.nodes[0]!], statusOf)
      expect("error" in s! ? s.error : s!.members.length).toBe(7)
    }).pipe(Effect.scoped), { timeout: 120_000 })

  it.live("5 -> 3 online under writes: the master and a replica are removed, every acknowledged write stays, a removed node neither votes nor routes, and its stale config does not bring it back", () =>
    Effect.gen(function*() {
      const { c } = yield* clusterWithTable({ nodes: 5, database: true }, TABLE, 90_000)
      const admin = c.nodes.map((n) => `${n.host}:${n.adminPort}`).join(",")

      let removed: Array<number> = []
      const writer = yield* Effect.scoped(Effect.gen(function*() {
        // Through a node that stays: not the first master (removed below), nor the replica removed after it.
        const master = yield* waitForMaster(c, "the master")
        const keep = [...c.nodes].reverse().find((n) => n !== master)!
        const w = yield* startWriter(keep.rwPort!, TABLE, 1_000_000)
        const flowing = writesFlowing([w], "writes to get through", 60_000)
        yield* flowing
        // Refused: not a member; asked of a node that is not the master.
        const replica = c.nodes.find((n) => n !== master && n !== keep)!
        const notMember = yield* runCli(["member", "remove", "--admin", admin, "--token", c.adminToken, "--id", "9"])
        expect(notMember.code).not.toBe(0)
        expect(notMember.out).toMatch(/node 9 is not a member/)
        const notMaster = yield* Effect.flip(requestRemoveMember({ address: `${replica.host}:${replica.adminPort}`, token: c.adminToken }, replica.nodeId))
        expect(notMaster.message).toMatch(/not the master/)

        // The master: it hands over first.
        const byCli = yield* runCli(["member", "remove", "--admin", admin, "--token", c.adminToken, "--id", String(master.nodeId)])
        expect(byCli.code, byCli.out).toBe(0)
        expect(byCli.out).toMatch(/handing over/)
        expect(byCli.out).toContain(`done: node ${master.nodeId} is no longer a member`)
        removed = [master.nodeId]
        yield* flowing
        // Then a replica.
        const next = yield* waitForMaster(c, "the new master")
        const other = c.nodes.find((n) => n !== next && n !== keep && !removed.includes(n.nodeId))!
        const again = yield* runCli(["member", "remove", "--config", keep.configPath, "--id", String(other.nodeId)])
        expect(again.code, again.out).toBe(0)
        removed = [...removed, other.nodeId]
        yield* flowing
        return w
      }))

      const members = c.nodes.filter((n) => !removed.includes(n.nodeId))
      expect(members.length).toBe(3)
      // The remaining three agree on the members and hold every acknowledged write.
      yield* LocalCluster.waitFor("the members to agree on the data", Effect.map(
        Effect.forEach(members, (n) => checksum(n, TABLE)),
        (sums) => new Set(sums).size === 1
      ), 60_000)
      for (const n of members) {
        const ids = yield* idsOn(n, TABLE)
        expect(writer.acked.filter((id) => !ids.has(id)), `node ${n.nodeId}`).toEqual([])
        const s = yield* statusOf(n)
        expect("error" in s ? s.error : s.members.map((m) => m.nodeId).sort()).toEqual(members.map((m) => m.nodeId).sort())
        expect("error" in s ? s.error : s.membership).toBe("voter")
      }
      // A removed node knows it: it serves no one, with a clear error, and never runs for master.
      for (const id of removed) {
        const n = c.nodes.find((x) => x.nodeId === id)!
        yield* LocalCluster.waitFor(`node ${id} to know it was removed`, Effect.map(statusOf(n), (s) => !("error" in s) && s.membership === "not a member"), 30_000)
        expect(yield* connectError(n.rwPort!)).toMatch(/removed from the cluster/)
        expect(yield* connectError(n.roPort!)).toMatch(/removed from the cluster/)
      }
      // Its agent restarted from its (stale) config file: still no member, the cluster unchanged.
      const stale = c.nodes.find((x) => x.nodeId === removed[1])!
      yield* stale.kill("SIGKILL")
      yield* stale.start
      yield* LocalCluster.waitFor("the restarted node to answer", Effect.map(statusOf(stale), (s) => !("error" in s) && s.membership === "not a member"), 60_000)
      const master = yield* waitForMaster(c, "a master after the restart")
      expect(removed).not.toContain(master.nodeId)
      const s = yield* statusOf(master)
      expect("error" in s ? s.error : s.members.map((m) => m.nodeId).sort()).toEqual(members.map((m) => m.nodeId).sort())
    }).pipe(Effect.scoped), { timeout: 420_000 })
})
