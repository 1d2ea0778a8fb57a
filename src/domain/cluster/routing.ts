/**
 * Where new client connections go (docs/architecture.md, "Proxy and routing"), as pure data and policy: RW to
 * the master's MariaDB; RO to this node's MariaDB when it is a replica, else to another
 * replica, else (if allowed) to the master. Another node's MariaDB is reached only through
 * that node's forward port.
 */

export type Role = "rw" | "ro"

export type Target =
  /**
   * This node's MariaDB: the proxy connects to it directly, over `socket` when set (a
   * managed server takes PROXY headers only there, docs/mariadb.md "PROXY protocol").
   */
  | { readonly kind: "local"; readonly host: string; readonly port: number; readonly socket?: string }
  /** Another node's agent, on its forward port for the role (with peer TLS its certificate must name `nodeId`). */
  | { readonly kind: "forward"; readonly host: string; readonly port: number; readonly nodeId?: number }
  /** No target: new connections get an ERR with this reason (e.g. "no master available"). */
  | { readonly kind: "none"; readonly reason: string }

/** Where this node's MariaDB listens: TCP, and its Unix socket when the proxy should use that. */
export interface LocalMariaDbAddress {
  readonly host: string
  readonly port: number
  readonly socket?: string
}

export interface Routes {
  readonly rw: Target
  readonly ro: Target
}

export interface RoutingView {
  readonly self: number
  /** The node holding the master lease, as this node knows it. */
  readonly master: number | null
  readonly localMariaDb: LocalMariaDbAddress
  readonly members: ReadonlyArray<{
    readonly nodeId: number
    readonly forwardRw: { readonly host: string; readonly port: number }
    readonly forwardRo: { readonly host: string; readonly port: number }
  }>
  /** Nodes whose database can serve reads now (reachable, replicating, not diverged). */
  readonly readable: ReadonlySet<number>
  /** With no replica readable, send RO to the master instead of refusing. */
  readonly roFallbackToMaster: boolean
}

const forwardOf = (view: RoutingView, nodeId: number, role: Role): Target | undefined => {
  const m = view.members.find((x) => x.nodeId === nodeId)
  if (m === undefined) return undefined
  const a = role === "rw" ? m.forwardRw : m.forwardRo
  return { kind: "forward", host: a.host, port: a.port, nodeId }
}

const local = (view: RoutingView): Target => ({ kind: "local", ...view.localMariaDb })

export const routesFor = (view: RoutingView): Routes => {
  const rw: Target = view.master === null
    ? { kind: "none", reason: "no master available (election in progress or no majority)" }
    : view.master === view.self
    ? local(view)
    : forwardOf(view, view.master, "rw") ?? { kind: "none", reason: `master node ${view.master} is not a known member` }

  const replicas = view.members
    .map((m) => m.nodeId)
    .filter((id) => id !== view.master && view.readable.has(id))
    .sort((a, b) => a - b)
  let ro: Target
  if (replicas.includes(view.self)) ro = local(view)
  else if (replicas.length > 0) ro = forwardOf(view, replicas[0]!, "ro")!
  else if (view.roFallbackToMaster && view.master !== null) {
    ro = view.master === view.self ? local(view) : forwardOf(view, view.master, "ro") ?? rw
  } else ro = { kind: "none", reason: "no replica available for reads" }
  return { rw, ro }
}
