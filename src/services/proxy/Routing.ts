/**
 * Where the proxy sends new connections (docs/architecture.md, "Proxy and routing"): for each role ("rw", "ro")
 * either this node's MariaDB, another node's forward port, or nowhere (with the reason a
 * client is told). Static from config for now; the cluster wires a settable one to the
 * master lease.
 */
import { Context, Effect, Layer, Stream, SubscriptionRef } from "effect"

import type { Role, Routes, Target } from "../../domain/cluster/routing.js"

export type { Role, Routes, Target }

export interface RoutingShape {
  /** The routes now. */
  readonly current: Effect.Effect<Routes>
  /** The current routes, then every change. */
  readonly changes: Stream.Stream<Routes>
}

export class Routing extends Context.Service<Routing, RoutingShape>()("phxmaria/Routing") {}

export interface SettableRouting extends RoutingShape {
  readonly set: (role: Role, target: Target) => Effect.Effect<void>
  readonly setAll: (routes: Routes) => Effect.Effect<void>
}

export const noTarget = (reason: string): Target => ({ kind: "none", reason })

export const sameTarget = (a: Target, b: Target): boolean =>
  a.kind === b.kind &&
  (a.kind === "none" ? a.reason === (b as typeof a).reason : a.host === (b as typeof a).host && a.port === (b as typeof a).port)

export const describeTarget = (t: Target): string => (t.kind === "none" ? `none (${t.reason})` : `${t.kind} ${t.host}:${t.port}`)

/** A routing table that can be changed at run time (tests; the cluster drives it from the lease). */
export const makeSettable = (initial: Routes): Effect.Effect<SettableRouting> =>
  Effect.map(SubscriptionRef.make<Routes>(initial), (ref) => ({
    current: SubscriptionRef.get(ref),
    changes: SubscriptionRef.changes(ref),
    set: (role, target) => SubscriptionRef.update(ref, (r) => ({ ...r, [role]: target })),
    setAll: (routes) => SubscriptionRef.set(ref, routes)
  }))

/** Fixed routes from config. */
export const layerStatic = (routes: Routes): Layer.Layer<Routing> =>
  Layer.succeed(Routing, { current: Effect.succeed(routes), changes: Stream.make(routes) })

/** A settable table as the Routing service; the same object is returned for `set`. */
export const layerSettable = (initial: Routes): Layer.Layer<Routing> => Layer.effect(Routing, makeSettable(initial))

/** The settable table behind Routing, for whoever decides the routes (RouteKeeper). */
export class RoutingTable extends Context.Service<RoutingTable, SettableRouting>()("phxmaria/RoutingTable") {}

/** One settable table as both RoutingTable (to set) and Routing (to follow). */
export const layerTable = (initial: Routes): Layer.Layer<RoutingTable | Routing> =>
  Layer.effectContext(Effect.map(makeSettable(initial), (table) =>
    Context.make(RoutingTable, table).pipe(Context.add(Routing, table))))
