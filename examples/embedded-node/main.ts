/**
 * Embeds a one-node phxmaria cluster (its own managed mariadbd under DATA_DIR) in an Effect
 * program, creates an application login on it, then writes and reads through the node's RW
 * and RO ports with the cluster-aware client. Prints one JSON line and exits.
 *
 *   DATA_DIR=/tmp/phx PORTS=24001,24002,24003,24004,24005,24006,24007,24008 node dist/main.js
 *
 * PORTS: peer, admin, rw, ro, forward rw, forward ro, mariadb, binlog server.
 */
import { Effect, Layer, Schedule } from "effect"
import mysql from "mysql2/promise"
import { ClusterClient, decodeNodeConfig, NodeLayer, RunningNode } from "phxmaria"
import { join } from "node:path"
import { userInfo } from "node:os"

const dataDir = process.env["DATA_DIR"] ?? "/tmp/phxmaria-example"
const [peer, admin, rw, ro, forwardRw, forwardRo, mariadb, binlogServer] = (process.env["PORTS"] ?? "24001,24002,24003,24004,24005,24006,24007,24008")
  .split(",").map(Number)

const program = Effect.gen(function*() {
  const node = yield* RunningNode
  // The first login: an admin session on the node's own MariaDB socket (it is the master;
  // the CREATE USER replicates through the log like any write).
  yield* node.status.pipe(
    Effect.filterOrFail((s) => s.database?.role === "master", () => new Error("not master yet")),
    Effect.retry({ schedule: Schedule.spaced("200 millis"), times: 150 })
  )
  yield* Effect.promise(async () => {
    const conn = await mysql.createConnection({
      socketPath: join(dataDir, "mariadb", "mysqld.sock"),
      user: process.getuid?.() === 0 ? "root" : userInfo().username
    })
    await conn.query("CREATE USER IF NOT EXISTS 'app'@'%' IDENTIFIED BY 'app-password'")
    await conn.query("GRANT ALL ON shop.* TO 'app'@'%'")
    await conn.end()
  })

  const client = yield* ClusterClient.ClusterClient
  yield* client.query("CREATE DATABASE IF NOT EXISTS shop")
  yield* client.query("CREATE TABLE IF NOT EXISTS shop.orders (id INT PRIMARY KEY, item VARCHAR(64))")
  yield* client.query("INSERT INTO shop.orders VALUES (?, ?)", [1, "teapot"])
  yield* client.transaction((tx) =>
    Effect.gen(function*() {
      yield* tx.query("INSERT INTO shop.orders VALUES (?, ?)", [2, "kettle"])
      yield* tx.query("UPDATE shop.orders SET item = ? WHERE id = ?", ["big teapot", 1])
    }))
  const written = yield* client.query("SELECT id, item FROM shop.orders ORDER BY id")
  const status = yield* node.status
  console.log(JSON.stringify({ event: "example-done", role: status.role, rows: written.rows }))
})

const config = decodeNodeConfig({
  clusterId: "example",
  nodeId: 1,
  dataDir,
  // Founds a one-node cluster in its own dir (on later runs the state exists and this does nothing).
  bootstrap: true,
  members: [{ nodeId: 1, host: "127.0.0.1", port: peer, adminPort: admin, rwPort: rw, roPort: ro, forwardRwPort: forwardRw, forwardRoPort: forwardRo }],
  // A small server for an example (the default buffer pool is half the machine's memory).
  mariadb: { port: mariadb, binlogServerPort: binlogServer, bufferPoolMb: 64 }
})

const main = Effect.gen(function*() {
  const cfg = yield* config
  const clientLayer = ClusterClient.layer({ members: [{ host: "127.0.0.1", rwPort: rw!, roPort: ro }], user: "app", password: "app-password" })
  yield* program.pipe(Effect.provide(Layer.merge(NodeLayer.layer(cfg), clientLayer)))
})

Effect.runPromise(main).then(
  () => process.exit(0),
  (e) => {
    console.error("example failed:", e)
    process.exit(1)
  }
)
