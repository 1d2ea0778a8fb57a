/** Wiring: the services a node runs, from its validated config. */
import { Layer } from "effect"
import { join } from "node:path"
import * as PaxosLog from "../services/PaxosLog.js"
import * as PaxosStorage from "../services/PaxosStorage.js"
import type { NodeConfig } from "./NodeConfig.js"

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
