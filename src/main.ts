#!/usr/bin/env node
/** The phxmaria command line. */
import { NodeRuntime, NodeServices } from "@effect/platform-node"
import { Cause, Console, Data, Effect, Exit, Option } from "effect"
import { Command, Flag } from "effect/cli"
import { renderStatusTable } from "./domain/nodeStatus.js"
import { loadNodeConfig } from "./layers/NodeConfig.js"
import { nodeLayer } from "./layers/NodeLayer.js"
import { nodeStatus } from "./layers/NodeStatusLayer.js"
import * as Admin from "./services/Admin.js"
import { fetchStatus } from "./services/StatusClient.js"
import { PaxosLog } from "./services/PaxosLog.js"

class UsageError extends Data.TaggedError("UsageError")<{ readonly message: string }> {}

const configFlag = Flag.String("config").pipe(Flag.withDescription("path to the node's config file (JSON or YAML)"))

const readConfig = (path: string) =>
  loadNodeConfig(path).pipe(Effect.tapError((e) => Console.error(`phxmaria: invalid config ${e.path}: ${e.message}`)))

const node = Command.make("node", { config: configFlag }, ({ config }) =>
  Effect.gen(function*() {
    const cfg = yield* readConfig(config)
    const self = cfg.members.find((m) => m.nodeId === cfg.nodeId)!
    yield* Effect.gen(function*() {
      const log = yield* PaxosLog
      const status = yield* nodeStatus(cfg)
      const admin = yield* Admin.serve({ host: self.host, port: self.adminPort, status })
      // One line on stdout that tools (tests, bench, demo) wait for.
      yield* Console.log(JSON.stringify({ event: "ready", nodeId: cfg.nodeId, peerPort: log.address.port, adminPort: admin.port }))
      return yield* Effect.never
    }).pipe(Effect.provide(nodeLayer(cfg)), Effect.scoped)
  })).pipe(Command.withDescription("run one cluster node: Paxos log, cluster state, master lease, admin HTTP"))

const status = Command.make(
  "status",
  {
    config: configFlag.pipe(Flag.optional),
    admin: Flag.String("admin").pipe(
      Flag.withDescription("comma-separated admin addresses host:port (instead of --config)"),
      Flag.optional
    )
  },
  ({ admin, config }) =>
    Effect.gen(function*() {
      const targets = Option.isSome(config)
        ? (yield* readConfig(config.value)).members.map((m) => ({ nodeId: m.nodeId, address: `${m.host}:${m.adminPort}` }))
        : Option.isSome(admin)
        ? admin.value.split(",").map((address, i) => ({ nodeId: i + 1, address: address.trim() }))
        : yield* Effect.fail(new UsageError({ message: "status needs --config FILE or --admin host:port,..." }))
      const rows = yield* Effect.forEach(targets, (t) =>
        Effect.map(fetchStatus(t.address), (status) => ({ ...t, status })), { concurrency: "unbounded" })
      yield* Console.log(renderStatusTable(rows))
    }).pipe(Effect.tapError((e) => e._tag === "UsageError" ? Console.error(`phxmaria: ${e.message}`) : Effect.void))
).pipe(Command.withDescription("show every node's role, epoch, lease and log positions as a table"))

const app = Command.make("phxmaria").pipe(
  Command.withDescription("a MySQL-compatible, Paxos-replicated cluster on stock MariaDB"),
  Command.withSubcommands([node, status])
)

Command.run(app, { version: "0.1.0" }).pipe(
  Effect.provide(NodeServices.layer),
  // Errors were already reported in plain words where they arose.
  (program) =>
    NodeRuntime.runMain(program, {
      disableErrorReporting: true,
      // A stop requested with SIGINT/SIGTERM is a clean exit (0), not a failure (130).
      teardown: (exit, onExit) => onExit(Exit.isSuccess(exit) || Cause.hasInterruptsOnly(exit.cause) ? 0 : 1)
    })
)

