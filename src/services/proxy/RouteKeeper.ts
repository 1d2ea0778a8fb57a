/**
 * Decides the proxy's routes (docs/architecture.md, "Proxy and routing") from what this
 * node knows: its lease and database role, the applied master record, which peers are
 * reachable and which of them advertise that they serve reads. Routes follow at once what
 * moves them (a new master record, a lease event, a role change through `refresh`) and
 * once a second what is only polled (reachability, the peers' read flags).
 */
import { Context, Effect, Layer, Schedule, Stream, SubscriptionRef } from "effect"
import { type LocalMariaDbAddress, routesFor } from "../../domain/cluster/routing.js"
import { ClusterState } from "../cluster/ClusterState.js"
import { MasterLease } from "../cluster/MasterLease.js"
import { DatabaseRoleCell } from "../database/DatabaseRole.js"
import { forkScopedLogged } from "../fibers.js"
import { PaxosLog } from "../paxos/PaxosLog.js"
import { describeTarget, noTarget, RoutingTable, sameTarget } from "./Routing.js"
import { Proxy } from "./Proxy.js"

/** The heartbeat flag of a node whose database serves reads (a replica, not diverged, up). */
export const SERVES_READS = 1
/** The heartbeat flag of a replica that has applied every chosen transaction (a switchover's target). */
export const CAUGHT_UP = 2
/** A peer's read flag older than this counts as not serving (heartbeats come every 500 ms). */
const HEARTBEAT_MAX_AGE_MS = 2_000

export interface RouteRefreshShape {
  /** Recomputes the routes now (a fence or an opening must not wait for the next poll). */
  readonly refresh: Effect.Effect<void>
}

export class RouteRefresh extends Context.Service<RouteRefresh, RouteRefreshShape>()("phxmaria/RouteRefresh") {}

export interface RouteKeeperOptions {
  readonly nodeId: number
  readonly localMariaDb: LocalMariaDbAddress
  readonly members: ReadonlyArray<{
    readonly nodeId: number
    readonly forwardRw: { readonly host: string; readonly port: number }
    readonly forwardRo: { readonly host: string; readonly port: number }
  }>
  /** With no replica readable, send RO connections to the master. */
  readonly roFallbackToMaster: boolean
}

export const make = Effect.fnUntraced(function*(options: RouteKeeperOptions) {
  const table = yield* RoutingTable
  const cluster = yield* ClusterState
  const log = yield* PaxosLog
  const lease = yield* MasterLease
  const roleCell = yield* DatabaseRoleCell
  const proxy = yield* Proxy

  const peersServingReads = Effect.map(log.advertised(HEARTBEAT_MAX_AGE_MS), (flags) =>
    new Set([...flags].filter(([, f]) => (f & SERVES_READS) !== 0).map(([id]) => id)))

  const refresh = Effect.gen(function*() {
    const [snapshot, paxos, role, isMaster, servingReads] = [
      yield* cluster.current,
      yield* log.status,
      yield* SubscriptionRef.get(roleCell),
      yield* lease.isMaster,
      yield* peersServingReads
    ]
    // This node serves RW only while promoted with the lease held; the master record as
    // applied names the others (the lease's view of it may trail by a fiber hop).
    const recorded = snapshot.state.master
    const master = isMaster && role === "master" ? options.nodeId : recorded === options.nodeId ? null : recorded
    // RO is never sent to a node that would refuse it (its forward RO port refuses anyway).
    const readable = new Set<number>(paxos.reachable.filter((id) => servingReads.has(id)))
    if (role === "replica") readable.add(options.nodeId)
    else readable.delete(options.nodeId)
    // The members as the log names them (their forward ports), else as configured.
    const membership = snapshot.state.membership
    const members = membership === undefined ? options.members : membership.flatMap((m) =>
      m.forwardRwPort === undefined || m.forwardRoPort === undefined ? [] : [{
        nodeId: m.nodeId,
        forwardRw: { host: m.host, port: m.forwardRwPort },
        forwardRo: { host: m.host, port: m.forwardRoPort }
      }])
    // A member added since the config was written may relay to our forward ports.
    if (membership !== undefined) yield* proxy.addMemberHosts(membership.map((m) => m.host))
    const removed = membership !== undefined && !membership.some((m) => m.nodeId === options.nodeId)
    const refusal = `node ${options.nodeId} was removed from the cluster: connect to a member's port instead`
    const routes = removed
      ? { rw: noTarget(refusal), ro: noTarget(refusal) }
      : routesFor({
        self: options.nodeId,
        master,
        localMariaDb: options.localMariaDb,
        members,
        readable,
        roFallbackToMaster: options.roFallbackToMaster
      })
    const now = yield* table.current
    if (!sameTarget(now.rw, routes.rw) || !sameTarget(now.ro, routes.ro)) {
      yield* table.setAll(routes)
      yield* Effect.logInfo(`routes: rw ${describeTarget(routes.rw)}, ro ${describeTarget(routes.ro)}`)
    }
  })

  const refreshLogged = refresh.pipe(Effect.catchCause((cause) => Effect.logError("routing refresh failed", cause)))
  yield* refreshLogged.pipe(Effect.repeat(Schedule.spaced("1 second")), forkScopedLogged("routing: the refresh loop"))
  yield* cluster.masterChanges.pipe(
    Stream.changesWith((a, b) => a.state.master === b.state.master && a.state.members === b.state.members),
    Stream.runForEach(() => refreshLogged),
    forkScopedLogged("routing: following master changes")
  )
  const leaseEvents = yield* lease.events
  yield* leaseEvents.pipe(Stream.runForEach(() => refreshLogged), forkScopedLogged("routing: following lease events"))
  return RouteRefresh.of({ refresh: refreshLogged })
})

export const layer = (options: RouteKeeperOptions) => Layer.effect(RouteRefresh, make(options))
