/**
 * phxmaria as a library: the node as one Layer, its services as Layers, the config schema,
 * the domain types and a cluster-aware client. Importing it starts nothing; the CLI is
 * `dist/main.js`. A local cluster for tests and tools is under "phxmaria/testing".
 */

// The whole node, and its parts, from a validated config.
export * as NodeLayer from "./layers/NodeLayer.js"
export { RunningNode, type RunningNodeShape } from "./layers/NodeLayer.js"
export * as DatabaseNode from "./layers/DatabaseNode.js"

// Config: the schema, validation of data or of a file.
export {
  ConfigFileError,
  decodeNodeConfig,
  leaseConfigOf,
  loadNodeConfig,
  MemberConfig,
  NodeConfig
} from "./config/NodeConfig.js"

// Clients.
export * as ClusterClient from "./client/ClusterClient.js"
export * as StatusClient from "./client/StatusClient.js"
export * as PaxosClient from "./client/PaxosClient.js"

// Services (each module: its service tag, shape, errors and layer).
export * as PaxosLog from "./services/paxos/PaxosLog.js"
export * as PaxosStorage from "./services/paxos/PaxosStorage.js"
export * as Transport from "./services/paxos/Transport.js"
export * as MemoryNetwork from "./services/paxos/MemoryNetwork.js"
export * as ClusterState from "./services/cluster/ClusterState.js"
export * as MasterLease from "./services/cluster/MasterLease.js"
export * as MariaDbServer from "./services/database/MariaDbServer.js"
export * as NodeDatabase from "./services/database/NodeDatabase.js"
export * as BinlogCapture from "./services/binlog/BinlogCapture.js"
export * as BinlogServer from "./services/binlog/BinlogServer.js"
export * as BinlogSource from "./services/binlog/BinlogSource.js"
export * as ChosenBinlog from "./services/binlog/ChosenBinlog.js"
export * as Proxy from "./services/proxy/Proxy.js"
export * as Routing from "./services/proxy/Routing.js"
export * as Admin from "./services/admin/Admin.js"
export * as Metrics from "./services/admin/Metrics.js"
export * as Logging from "./services/logging.js"
export * as HostAddresses from "./services/net/HostAddresses.js"

// Domain types and pure logic.
export * as Cluster from "./domain/cluster/cluster.js"
export * as Gtid from "./domain/cluster/gtid.js"
export * as Lease from "./domain/cluster/lease.js"
export * as NodeStatus from "./domain/cluster/nodeStatus.js"
export * as Health from "./domain/cluster/health.js"
export * as PaxosCore from "./domain/paxos/core.js"
export * as PaxosErrors from "./domain/paxos/errors.js"
export * as PaxosMessages from "./domain/paxos/messages.js"
