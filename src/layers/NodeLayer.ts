/** Wiring: a whole node, or its parts, as Layers built from a validated config. */
import { Context, Data, Effect, Layer, Option, Schedule, Schema, Struct } from "effect"
import { chmodSync, chownSync, mkdirSync } from "node:fs"
import { join } from "node:path"
import type { NodeStatus } from "../domain/cluster/nodeStatus.js"
import * as Admin from "../services/admin/Admin.js"
import * as ClusterState from "../services/cluster/ClusterState.js"
import * as MasterLease from "../services/cluster/MasterLease.js"
import * as Membership from "../services/cluster/Membership.js"
import * as PaxosLog from "../services/paxos/PaxosLog.js"
import * as PaxosStorage from "../services/paxos/PaxosStorage.js"
import * as Transport from "../services/paxos/Transport.js"
import * as PeerTls from "../services/tls/PeerTls.js"
import * as AdminViews from "./AdminViews.js"
import * as HostAddresses from "../services/net/HostAddresses.js"
import { forkScopedLogged } from "../services/fibers.js"
import * as DatabaseNode from "./DatabaseNode.js"
import { serverUser } from "../services/database/MariaDbLayout.js"
import { adminTokenOf, leaseConfigOf, MAX_NODE_ID, type NodeConfig, retentionOf } from "../config/NodeConfig.js"
import { isHostSyntax } from "../domain/wire/address.js"
import { nodeStatus } from "../services/admin/NodeStatus.js"
import { ClusterMember, membershipOfValue } from "../domain/cluster/cluster.js"
import { CAUGHT_UP } from "../services/proxy/RouteKeeper.js"

/** This node's Paxos log on its LMDB store (`dataDir/paxos`), over the PeerNetwork given. */
export const paxosLogLayer = (config: NodeConfig) => {
  const { tickMs, proposeTimeoutMs, acceptClients, ...tuning } = config.paxos ?? {}
  return Layer.unwrap(Effect.map(PeerTls.loadOptional(config.tls, config.nodeId), (tls) => PaxosLog.layer({
    clusterId: config.clusterId,
    tls,
    ...(acceptClients !== undefined ? { acceptClients } : {}),
    nodeId: config.nodeId,
    members: config.members,
    founding: config.bootstrap === true,
    joining: config.join === true,
    tuning,
    retention: retentionOf(config),
    membershipOf: membershipOfValue,
    ...(tickMs !== undefined ? { tickMs } : {}),
    ...(proposeTimeoutMs !== undefined ? { proposeTimeoutMs } : {})
  }))).pipe(Layer.provide(PaxosStorage.layer(
    join(config.dataDir, "paxos"),
    config.log?.segmentMb !== undefined ? { segmentBytes: config.log.segmentMb * 1024 * 1024 } : {}
  )))
}

/**
 * Paxos log, cluster state and master lease. With a database the lease reads readiness
 * from a cell the database side sets; without one the node is always ready.
 */
export const coreLayer = (config: NodeConfig) => {
  // A joiner does not know the founding members: the log tells it.
  const state = ClusterState.layer({ dir: join(config.dataDir, "state"), members: config.join === true ? [] : config.members.map((m) => m.nodeId) }).pipe(
    Layer.provideMerge(paxosLogLayer(config))
  )
  const readiness = config.mariadb === undefined
    ? Layer.merge(MasterLease.Readiness.alwaysReady, Layer.succeed(MasterLease.ReadinessCell, { set: () => Effect.void }))
    : MasterLease.readinessCellLayer
  return MasterLease.layer(leaseConfigOf(config)).pipe(
    Layer.provideMerge(state),
    Layer.provideMerge(readiness)
  )
}

export interface Address {
  readonly host: string
  readonly port: number
}

export interface RunningNodeShape {
  readonly nodeId: number
  /** Where it listens: peers, admin HTTP and (with a database) the RW and RO client ports. */
  readonly addresses: {
    readonly peer: Address
    readonly admin: Address
    readonly rw?: Address | undefined
    readonly ro?: Address | undefined
  }
  /** What GET /status answers. */
  readonly status: Effect.Effect<NodeStatus>
  /** Fails once the node can no longer take part (its state cannot apply the log); never succeeds. */
  readonly stopped: Effect.Effect<never, ClusterState.ClusterStateError>
}

/** A running node: everything `node dist/main.js node` runs, until its scope closes. */
export class RunningNode extends Context.Service<RunningNode, RunningNodeShape>()("phxmaria/RunningNode") {}

const runningNode = (config: NodeConfig) =>
  Effect.gen(function*() {
    const self = config.members.find((m) => m.nodeId === config.nodeId)!
    const log = yield* PaxosLog.PaxosLog
    const cluster = yield* ClusterState.ClusterState
    const database = Option.getOrUndefined(yield* Effect.serviceOption(DatabaseNode.DatabaseNode))
    const status = yield* nodeStatus(config, database?.status)
    const membership = yield* Membership.make({
      nodeId: config.nodeId,
      founding: config.members
    })
    const answer = <E extends { readonly message: string }>(change: Effect.Effect<Membership.MembershipDone, E>, extra: Record<string, unknown>) =>
      change.pipe(
        Effect.map((done): Admin.Health => ({ ok: true, body: { ...extra, members: done.members, from: done.from } })),
        Effect.catch((e) => Effect.succeed<Admin.Health>({ ok: false, body: { error: e.message } }))
      )
    const decodeMember = Schema.decodeUnknownEffect(ClusterMember.mapFields(Struct.omit(["voter"])))
    // A learner is promoted once it says it has caught up (with a database: its replica applied everything).
    const caughtUp = (id: number) =>
      config.mariadb === undefined
        ? Effect.map(log.status, (s) => s.reachable.includes(id))
        : Effect.map(log.advertised(2_000), (flags) => ((flags.get(id) ?? 0) & CAUGHT_UP) !== 0)
    const newMember = (fields: Readonly<Record<string, number | string>>) => {
      const { id, ...rest } = fields
      // The same rules as a config's members: an id below the master terms' server ids, a host name or address.
      if (typeof id !== "number" || id < 1 || id > MAX_NODE_ID) {
        return Effect.fail(new Membership.MembershipRefused({ reason: `the new member: id must be 1 to ${MAX_NODE_ID}` }))
      }
      if (typeof rest.host !== "string" || !isHostSyntax(rest.host)) {
        return Effect.fail(new Membership.MembershipRefused({ reason: `the new member: host must be an IP address or a host name` }))
      }
      return decodeMember({ nodeId: id, ...rest }).pipe(
        Effect.mapError((e) => new Membership.MembershipRefused({ reason: `the new member: ${e.message}` }))
      )
    }
    const memberAdmin = {
      remove: (id: number) => answer(membership.remove(id), { removed: id }),
      promote: (id: number) => answer(membership.promote(id, caughtUp(id)), { voter: id }),
      add: (fields: Readonly<Record<string, number | string>>) => answer(Effect.flatMap(newMember(fields), membership.add), { added: fields.id }),
      replace: (old: number, fields: Readonly<Record<string, number | string>>) =>
        answer(
          Effect.flatMap(newMember(fields), (m) => membership.replace(old, m, caughtUp(m.nodeId))),
          { replaced: old, by: fields.id }
        )
    }
    const adminToken = adminTokenOf(config)
    if (adminToken === undefined) {
      yield* Effect.logWarning("no admin token (admin.token or admin.tokenFile): switchover, membership, rebuild and peers' copies of this database are refused over HTTP")
    }
    const views = yield* AdminViews.make(config, status, database)
    // The members' hosts as addresses (names resolved, followed as DNS and the log's membership change).
    const peers = yield* HostAddresses.memberMatcher(config.members.map((m) => m.host))
    yield* Effect.flatMap(cluster.current, (s) => peers.add((s.state.membership ?? []).map((m) => m.host))).pipe(
      Effect.repeat(Schedule.spaced("5 seconds")),
      forkScopedLogged("admin: following the members' hosts")
    )
    const admin = yield* Admin.serve({
      host: self.host,
      port: self.adminPort,
      isPeer: peers.isMember,
      token: adminToken,
      openStatus: config.admin?.openStatus,
      tls: yield* PeerTls.loadOptional(config.tls, config.nodeId),
      status,
      probes: views.probes,
      views: views.views,
      page: views.page,
      members: memberAdmin,
      ...(database === undefined ? {} : {
        users: { add: views.addUser },
        rebuild: database.rebuild,
        backup: { offer: database.backup },
        switchover: { run: database.switchover }
      })
    })
    return RunningNode.of({
      nodeId: config.nodeId,
      addresses: {
        peer: log.address,
        admin: { host: self.host, port: admin.port },
        rw: database?.addresses.rw,
        ro: database?.addresses.ro
      },
      status,
      stopped: cluster.stopped
    })
  })

/**
 * The whole node from a validated config (see `decodeNodeConfig` / `loadNodeConfig`): its
 * MariaDB (when configured), Paxos log, cluster state, master lease, proxy ports and admin
 * HTTP, with the log, state and lease services exposed too. Peers are reached over TCP
 * unless another PeerNetwork is given.
 */
export class DataDirError extends Data.TaggedError("DataDirError")<{ readonly dir: string; readonly reason: string }> {
  override get message() {
    return `dataDir ${this.dir}: ${this.reason}`
  }
}

/**
 * The node's dataDir, created if missing and made 0700: it holds every row image (the
 * Paxos log, the state store, MariaDB's files), so no other local user may read it.
 */
const privateDataDir = (config: NodeConfig) =>
  Layer.effectDiscard(Effect.try({
    try: () => {
      mkdirSync(config.dataDir, { recursive: true, mode: 0o700 })
      // A managed mariadbd run as `mysql` (the agent is root) passes through to `mariadb/`
      // (its group may enter, not list); nobody else gets in.
      const server = config.mariadb !== undefined && (config.mariadb.mode ?? "managed") === "managed" ? serverUser() : undefined
      if (server !== undefined) chownSync(config.dataDir, 0, server.gid)
      chmodSync(config.dataDir, server !== undefined ? 0o710 : 0o700)
    },
    catch: (e) => new DataDirError({ dir: config.dataDir, reason: e instanceof Error ? e.message : String(e) })
  }))

export const layer = (config: NodeConfig, network: Layer.Layer<Transport.PeerNetwork> = Transport.tcpLayer) => {
  const core = coreLayer(config)
  const running = Layer.effect(RunningNode, runningNode(config))
  const withDatabase = config.mariadb === undefined
    ? running.pipe(Layer.provideMerge(core))
    : running.pipe(Layer.provideMerge(DatabaseNode.layer(config)), Layer.provideMerge(core))
  return withDatabase.pipe(Layer.provide(network), Layer.provide(privateDataDir(config)))
}
