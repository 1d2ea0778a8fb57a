/** Fetches a node's GET /status; a node that does not answer gives an error row, not a failure. */
import { Data, Effect, Schema } from "effect"
import { NodeStatus } from "../domain/cluster/nodeStatus.js"
import { type IncomingMessage, request as httpRequest } from "node:http"
import { request as httpsRequest } from "node:https"
import * as PeerTls from "../services/tls/PeerTls.js"

const decode = Schema.decodeUnknownEffect(NodeStatus)

/**
 * A node's admin address ("host:port"), with the cluster's admin token that calls which
 * change something need (docs/operations.md, "Admin HTTP").
 */
export type AdminEndpoint = string | {
  readonly address: string
  readonly token?: string | undefined
  /** Peer TLS: the call goes over HTTPS with this node certificate (the token then never travels in clear). */
  readonly tls?: PeerTls.PeerTls | undefined
}

const addressOf = (e: AdminEndpoint) => (typeof e === "string" ? e : e.address)

/** One admin call: `method path` to `e`, with its token (and over HTTPS with its certificate); the status and JSON body. */
const adminCall = (e: AdminEndpoint, method: string, path: string, signal: AbortSignal): Promise<{ readonly status: number; readonly body: unknown }> => {
  const endpoint = typeof e === "string" ? { address: e } : e
  const [host, port] = splitAddress(endpoint.address)
  const headers = endpoint.token !== undefined ? { authorization: `Bearer ${endpoint.token}` } : {}
  return new Promise((resolve, reject) => {
    const onResponse = (res: IncomingMessage) => {
      const chunks: Array<Buffer> = []
      res.on("data", (c: Buffer) => chunks.push(c))
      res.on("error", reject)
      res.on("end", () => {
        let body: unknown = {}
        try {
          body = JSON.parse(Buffer.concat(chunks).toString("utf8"))
        } catch {
          // Not JSON: the status alone speaks.
        }
        resolve({ status: res.statusCode ?? 0, body })
      })
    }
    const asked = { host, port, path, method, headers, signal }
    const req = endpoint.tls === undefined
      ? httpRequest(asked, onResponse)
      : httpsRequest({ ...asked, ...PeerTls.clientOptions(endpoint.tls, undefined), agent: false }, onResponse)
    req.on("error", reject)
    req.end()
  })
}

/** "host:port" (IPv6 in brackets) as host and port. */
const splitAddress = (address: string): [string, number] => {
  const i = address.lastIndexOf(":")
  return [address.slice(0, i).replace(/^\[(.*)\]$/, "$1"), Number(address.slice(i + 1))]
}

export class RebuildRefused extends Data.TaggedError("RebuildRefused")<{ readonly address: string; readonly message: string }> {}

/** POST /rebuild to one node's admin address: what it said when it took the request, else why not. */
export const requestRebuild = (endpoint: AdminEndpoint, timeoutMs = 5_000): Effect.Effect<string, RebuildRefused> => {
  const address = addressOf(endpoint)
  return Effect.tryPromise({
    try: async (signal) => {
      const r = await adminCall(endpoint, "POST", "/rebuild", signal)
      const body = r.body as { message?: string; error?: string }
      return { ok: r.status === 202, text: body.message ?? body.error ?? `HTTP ${r.status}` }
    },
    catch: (e) => new RebuildRefused({ address, message: e instanceof Error ? e.message : String(e) })
  }).pipe(
    Effect.timeoutOrElse({ duration: `${timeoutMs} millis`, orElse: () => Effect.fail(new RebuildRefused({ address, message: "no answer" })) }),
    Effect.flatMap((r) => (r.ok ? Effect.succeed(r.text) : Effect.fail(new RebuildRefused({ address, message: r.text }))))
  )
}

export class SwitchoverFailed extends Data.TaggedError("SwitchoverFailed")<{ readonly address: string; readonly message: string }> {}

export interface SwitchoverAnswer {
  readonly from: number
  readonly to: number
  readonly master: number
  readonly epoch: number
  readonly handoverMs: number
}

/** POST /switchover[?to=N] to the master's admin address: what was done, else why not. */
export const requestSwitchover = (endpoint: AdminEndpoint, to: number | undefined, timeoutMs = 60_000): Effect.Effect<SwitchoverAnswer, SwitchoverFailed> => {
  const address = addressOf(endpoint)
  return Effect.tryPromise({
    try: async (signal) => {
      const r = await adminCall(endpoint, "POST", `/switchover${to === undefined ? "" : `?to=${to}`}`, signal)
      const body = r.body as Partial<SwitchoverAnswer> & { error?: string }
      return { ok: r.status === 200, body, text: body.error ?? `HTTP ${r.status}` }
    },
    catch: (e) => new SwitchoverFailed({ address, message: e instanceof Error ? e.message : String(e) })
  }).pipe(
    Effect.timeoutOrElse({ duration: `${timeoutMs} millis`, orElse: () => Effect.fail(new SwitchoverFailed({ address, message: "no answer" })) }),
    Effect.flatMap((r) => (r.ok ? Effect.succeed(r.body as SwitchoverAnswer) : Effect.fail(new SwitchoverFailed({ address, message: r.text }))))
  )
}

export class MembershipFailed extends Data.TaggedError("MembershipFailed")<{ readonly address: string; readonly message: string }> {}

/** DELETE /members/{id} on the master's admin address: the members after, else why not. */
export const requestRemoveMember = (address: AdminEndpoint, id: number, timeoutMs = 30_000) =>
  requestMembership(address, "DELETE", `/members/${id}`, timeoutMs)

/** POST /members?... (a learner) on the master's admin address. */
export const requestAddMember = (address: AdminEndpoint, member: Readonly<Record<string, number | string>>, timeoutMs = 30_000) =>
  requestMembership(address, "POST", `/members?${new URLSearchParams(Object.entries(member).map(([k, v]): [string, string] => [k, String(v)]))}`, timeoutMs)

/** POST /members/replace?old=X&... on the master's admin address: waits while the new node catches up (long). */
export const requestReplaceMember = (address: AdminEndpoint, old: number, member: Readonly<Record<string, number | string>>, timeoutMs = 31 * 60_000) =>
  requestMembership(address, "POST", `/members/replace?${new URLSearchParams([["old", String(old)], ...Object.entries(member).map(([k, v]): [string, string] => [k, String(v)])])}`, timeoutMs)

/** POST /members/{id}/voter on the master's admin address. */
export const requestPromoteMember = (address: AdminEndpoint, id: number, timeoutMs = 30_000) =>
  requestMembership(address, "POST", `/members/${id}/voter`, timeoutMs)

const requestMembership = (endpoint: AdminEndpoint, method: "POST" | "DELETE", path: string, timeoutMs: number) => {
  const address = addressOf(endpoint)
  return Effect.tryPromise({
    try: async (signal) => {
      const r = await adminCall(endpoint, method, path, signal)
      const body = r.body as { members?: ReadonlyArray<{ nodeId: number; voter: boolean }>; from?: number; error?: string }
      return { ok: r.status === 200, body, text: body.error ?? `HTTP ${r.status}` }
    },
    catch: (e) => new MembershipFailed({ address, message: e instanceof Error ? e.message : String(e) })
  }).pipe(
    Effect.timeoutOrElse({ duration: `${timeoutMs} millis`, orElse: () => Effect.fail(new MembershipFailed({ address, message: "no answer" })) }),
    Effect.flatMap((r) => (r.ok ? Effect.succeed({ members: r.body.members ?? [], from: r.body.from ?? 0 }) : Effect.fail(new MembershipFailed({ address, message: r.text }))))
  )
}

export class UserAddFailed extends Data.TaggedError("UserAddFailed")<{ readonly address: string; readonly message: string }> {}

export interface UserAdded {
  readonly user: string
  readonly grants: number
  /** The master's last GTID after the user's statements (null: unknown). */
  readonly gtid: string | null
}

/** POST /users?... on the master's admin address: an application user made through the log. */
export const requestAddUser = (
  endpoint: AdminEndpoint,
  user: { readonly name: string; readonly host: string; readonly hash: string; readonly grants: ReadonlyArray<string>; readonly update: boolean },
  timeoutMs = 60_000
): Effect.Effect<UserAdded, UserAddFailed> => {
  const address = addressOf(endpoint)
  const query = new URLSearchParams([
    ["name", user.name],
    ["host", user.host],
    ["hash", user.hash],
    ...user.grants.map((g): [string, string] => ["grant", g]),
    ...(user.update ? [["update", "1"] as [string, string]] : [])
  ])
  return Effect.tryPromise({
    try: async (signal) => {
      const r = await adminCall(endpoint, "POST", `/users?${query}`, signal)
      const body = r.body as Partial<UserAdded> & { error?: string }
      return { ok: r.status === 200, body, text: body.error ?? `HTTP ${r.status}` }
    },
    catch: (e) => new UserAddFailed({ address, message: e instanceof Error ? e.message : String(e) })
  }).pipe(
    Effect.timeoutOrElse({ duration: `${timeoutMs} millis`, orElse: () => Effect.fail(new UserAddFailed({ address, message: "no answer" })) }),
    Effect.flatMap((r) => (r.ok ? Effect.succeed(r.body as UserAdded) : Effect.fail(new UserAddFailed({ address, message: r.text }))))
  )
}

/** Why a node's report could not be had; `unauthorized`: it answered, but wants the admin token (admin.openStatus false). */
export interface StatusError {
  readonly error: string
  readonly unauthorized?: true
}

/**
 * GET `path` of a node, the way every reader of a node's reports asks: without the token
 * first, and with it only when the node answers 401 (admin.openStatus false), so that the
 * token does not travel where it is not needed; over HTTPS with `tls` (a node certificate).
 */
export const adminGet = (endpoint: AdminEndpoint, path: string, signal: AbortSignal, token?: string) => {
  const e = typeof endpoint === "string" ? { address: endpoint } : endpoint
  const bearer = token ?? e.token
  return adminCall({ address: e.address, tls: e.tls }, "GET", path, signal).then((r) =>
    r.status === 401 && bearer !== undefined ? adminCall({ address: e.address, tls: e.tls, token: bearer }, "GET", path, signal) : r
  )
}

/** GET /status of one node; `token`: sent only if the node asks for it (admin.openStatus false). */
export const fetchStatus = (endpoint: AdminEndpoint, timeoutMs = 2_000, token?: string): Effect.Effect<NodeStatus | StatusError> => {
  const address = addressOf(endpoint)
  return Effect.tryPromise({
    try: (signal) => adminGet(endpoint, "/status", signal, token),
    catch: (e) => e
  }).pipe(
    Effect.flatMap((r): Effect.Effect<NodeStatus | StatusError, unknown> =>
      r.status === 401
        ? Effect.succeed<StatusError>({ error: `${address}: /status needs the admin token (admin.openStatus is false): give --token or --config`, unauthorized: true })
        : r.status !== 200
        ? Effect.fail(new Error(`${address}: HTTP ${r.status}`))
        : decode(r.body)
    ),
    Effect.timeout(`${timeoutMs} millis`),
    Effect.catch((e) => Effect.succeed<StatusError>({ error: e instanceof Error ? e.message : String(e) }))
  )
}

