/** Fetches a node's GET /status; a node that does not answer gives an error row, not a failure. */
import { Effect, Schema } from "effect"
import { NodeStatus } from "../domain/cluster/nodeStatus.js"

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
