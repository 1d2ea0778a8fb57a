/** Wiring: the services a node runs, from its validated config. */
import { Effect, Layer } from "effect"
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

/**
 * Paxos log, cluster state and master lease. With a database the lease reads readiness
 * from a cell the database side sets; without one the node is always ready.
 */
export const nodeLayer = (config: NodeConfig) => {
  const log = paxosLogLayer(config)
  const state = ClusterState.layer({ dir: join(config.dataDir, "state"), members: config.members.map((m) => m.nodeId) }).pipe(
    Layer.provideMerge(log)
  )
  const readiness = config.mariadb === undefined
    ? Layer.merge(MasterLease.Readiness.alwaysReady, Layer.succeed(MasterLease.ReadinessCell, { set: () => Effect.void }))
    : MasterLease.readinessCellLayer
  return MasterLease.layer(leaseConfigOf(config)).pipe(
    Layer.provideMerge(state),
    Layer.provideMerge(readiness)
  )
}
