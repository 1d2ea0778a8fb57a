/** Fetches a node's GET /status; a node that does not answer gives an error row, not a failure. */
import { Effect, Schema } from "effect"
import { Agent, get } from "node:http"
import { NodeStatus } from "../domain/nodeStatus.js"

const decode = Schema.decodeUnknownEffect(NodeStatus)

export const fetchStatus = (address: string, timeoutMs = 2_000): Effect.Effect<NodeStatus | { readonly error: string }> =>
  Effect.tryPromise({
    try: (signal) => fetch(`http://${address}/status`, { signal }).then((r) => r.json()),
    catch: (e) => e
  }).pipe(
    Effect.flatMap(decode),
    Effect.timeout(`${timeoutMs} millis`),
    Effect.catch((e) => Effect.succeed({ error: e instanceof Error ? e.message : String(e) }))
  )

/** Kept-alive connections for probes repeated every second. */
const probeAgent = new Agent({ keepAlive: true, maxSockets: 4 })

/** Whether the node at `address` answers GET /replica with 200 (a replica serving reads). */
export const probeReplica = (address: string, timeoutMs = 500): Effect.Effect<boolean> =>
  Effect.callback<boolean>((resume) => {
    const [host, port] = [address.slice(0, address.lastIndexOf(":")), Number(address.slice(address.lastIndexOf(":") + 1))]
    const req = get({ host, port, path: "/replica", agent: probeAgent, timeout: timeoutMs }, (res) => {
      res.resume()
      res.once("end", () => resume(Effect.succeed(res.statusCode === 200)))
      res.once("error", () => resume(Effect.succeed(false)))
    })
    req.once("timeout", () => req.destroy())
    req.once("error", () => resume(Effect.succeed(false)))
    return Effect.sync(() => req.destroy())
  })
