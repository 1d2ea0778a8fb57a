#!/usr/bin/env node
/** The phxmaria command line. */
import { NodeRuntime, NodeServices } from "@effect/platform-node"
import { Cause, Console, Effect, Exit } from "effect"
import { Command, Flag } from "effect/cli"
import { loadNodeConfig } from "./layers/NodeConfig.js"
import { paxosLogLayer } from "./layers/PaxosNodeLayer.js"
import { PaxosLog } from "./services/PaxosLog.js"

const node = Command.make(
  "node",
  { config: Flag.String("config").pipe(Flag.withDescription("path to the node's JSON config file")) },
  ({ config }) =>
    Effect.gen(function*() {
      const cfg = yield* loadNodeConfig(config).pipe(
        Effect.tapError((e) => Console.error(`phxmaria: invalid config ${e.path}: ${e.message}`))
      )
      yield* Effect.gen(function*() {
        const log = yield* PaxosLog
        // One line on stdout that tools (tests, bench, demo) wait for.
        yield* Console.log(JSON.stringify({ event: "ready", nodeId: cfg.nodeId, peerPort: log.address.port }))
        return yield* Effect.never
      }).pipe(Effect.provide(paxosLogLayer(cfg)))
    })
).pipe(Command.withDescription("run one cluster node (for now: its Paxos replicated log)"))

const app = Command.make("phxmaria").pipe(
  Command.withDescription("a MySQL-compatible, Paxos-replicated cluster on stock MariaDB"),
  Command.withSubcommands([node])
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

