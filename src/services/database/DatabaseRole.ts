/** The database role of this node as a shared cell: NodeDatabase sets it, routing reads it. */
import { Context, Layer, SubscriptionRef } from "effect"
import type { DbRole } from "../../domain/cluster/databaseRole.js"

export type { DbRole }

export class DatabaseRoleCell extends Context.Service<DatabaseRoleCell, SubscriptionRef.SubscriptionRef<DbRole>>()("phxmaria/DatabaseRoleCell") {}

export const layer: Layer.Layer<DatabaseRoleCell> = Layer.effect(DatabaseRoleCell, SubscriptionRef.make<DbRole>("starting"))
