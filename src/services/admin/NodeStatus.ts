/** Builds this node's /status report from its services. */
import { Effect } from "effect"
import type { NodeStatus } from "../../domain/cluster/nodeStatus.js"
import { formatGtid } from "../../domain/cluster/gtid.js"
import { ClusterState } from "../cluster/ClusterState.js"
import { MasterLease } from "../cluster/MasterLease.js"
import { PaxosLog } from "../paxos/PaxosLog.js"
import type { NodeConfig } from "../../config/NodeConfig.js"

const mb = (bytes: number) => Math.round(bytes / 1024 / 102.4) / 10
const memory = () => {
  const m = process.memoryUsage()
  // `external` includes the ArrayBuffers (Node's Buffers among them).
  return { rssMb: mb(m.rss), heapTotalMb: mb(m.heapTotal), heapUsedMb: mb(m.heapUsed), externalMb: mb(m.external) }
}

const membershipOf = (membership: ReadonlyArray<{ readonly nodeId: number; readonly voter: boolean }> | undefined, nodeId: number, joining: boolean) => {
  // No Membership yet: the founding members vote; a joiner is none until the log names it.
  if (membership === undefined) return joining ? "not a member" as const : "voter" as const
  const self = membership.find((m) => m.nodeId === nodeId)
  return self === undefined ? "not a member" as const : self.voter ? "voter" as const : "learner" as const
}

export const nodeStatus = (
  config: NodeConfig,
  extra: Effect.Effect<Pick<NodeStatus, "database" | "proxy" | "commitPath">> = Effect.succeed({})
) =>
  Effect.gen(function*() {
    const log = yield* PaxosLog
    const cluster = yield* ClusterState
    const lease = yield* MasterLease
    return Effect.gen(function*() {
      const [paxos, snapshot, l] = [yield* log.status, yield* cluster.current, yield* lease.status]
      const reachable = new Set([config.nodeId, ...paxos.reachable])
      return {
        clusterId: config.clusterId,
        nodeId: config.nodeId,
        role: l.isMaster ? "master" : "replica",
        master: snapshot.state.master,
        epoch: snapshot.state.epoch,
        leaseRemainingMs: l.leaseRemainingMs,
        paxos: {
          role: paxos.role,
          chosenUpTo: paxos.chosenUpTo,
          lastChosenInstance: paxos.chosenUpTo - 1,
          writeMs: paxos.writeMs,
          roundMs: paxos.roundMs,
          compactedBelow: paxos.compactedBelow,
          logBytes: paxos.logBytes,
          needsInstall: paxos.needsInstall
        },
        appliedInstance: snapshot.appliedUpTo,
        lastGtid: snapshot.state.lastGtid === null ? null : formatGtid(snapshot.state.lastGtid),
        ...(yield* extra),
        memory: memory(),
        membership: membershipOf(snapshot.state.membership, config.nodeId, config.join === true),
        members: (snapshot.state.membership ?? config.members.map((m) => ({ ...m, voter: true }))).map((m) => ({
          nodeId: m.nodeId,
          host: m.host,
          port: m.port,
          adminPort: m.adminPort,
          reachable: reachable.has(m.nodeId),
          voter: m.voter
        }))
      } satisfies NodeStatus
    })
  })
