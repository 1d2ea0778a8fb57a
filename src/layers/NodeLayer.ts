/** Wiring: the services a node runs, from its validated config. */
import { Layer } from "effect"
import { join } from "node:path"
import * as ClusterState from "../services/ClusterState.js"
import * as MasterLease from "../services/MasterLease.js"
import * as PaxosLog from "../services/PaxosLog.js"
import * as PaxosStorage from "../services/PaxosStorage.js"
import { leaseConfigOf, type NodeConfig } from "./NodeConfig.js"

export const paxosLogLayer = (config: NodeConfig): Layer.Layer<PaxosLog.PaxosLog, PaxosStorage.StorageError> => {
  const { tickMs, proposeTimeoutMs, ...tuning } = config.paxos ?? {}
  return PaxosLog.layer({
    clusterId: config.clusterId,
    nodeId: config.nodeId,
    members: config.members,
    tuning,
    ...(tickMs !== undefined ? { tickMs } : {}),
    ...(proposeTimeoutMs !== undefined ? { proposeTimeoutMs } : {})
  }).pipe(Layer.provide(PaxosStorage.layer(join(config.dataDir, "paxos"))))
}

/** Paxos log, cluster state and master lease (readiness: always ready until the MariaDB part). */
export const nodeLayer = (config: NodeConfig) => {
  const log = paxosLogLayer(config)
  const state = ClusterState.layer({ dir: join(config.dataDir, "state"), members: config.members.map((m) => m.nodeId) }).pipe(
    Layer.provideMerge(log)
  )
  return MasterLease.layer(leaseConfigOf(config)).pipe(
    Layer.provideMerge(state),
    Layer.provide(MasterLease.Readiness.alwaysReady)
  )
}
