/**
 * A client of a node's Paxos log over its peer port (role "client"): proposes values and
 * asks for status. Used by tests and the benchmark; requests are matched to replies by id.
 */
import { Data, Effect, Queue, type Scope } from "effect"
import type { ProposeError } from "../domain/paxos/errors.js"
import { type ClientMessage, NodeMessage, nodeMessageFastPath, type Position } from "../services/paxos/PaxosLog.js"
import * as Transport from "../services/paxos/Transport.js"

export class ClientDisconnected extends Data.TaggedError("ClientDisconnected")<{ readonly message: string }> {}

export interface PaxosClient {
  readonly propose: (value: Uint8Array) => Effect.Effect<Position, ProposeError | ClientDisconnected>
  readonly status: Effect.Effect<{ readonly role: string; readonly chosenUpTo: number }, ClientDisconnected>
}

type Reply = Extract<ClientMessage, { _tag: "ClientChosen" | "ClientFailed" | "ClientStatusReply" }>

export const connect = (options: { clusterId: string; host: string; port: number }): Effect.Effect<
  PaxosClient,
  Transport.TransportConnectError,
  Scope.Scope
> =>
  Effect.gen(function*() {
    const waiting = new Map<number, (reply: Reply | undefined) => void>()
    let nextId = 1
    // Replies resume their requester right in the socket callback: no queue and fiber hop.
    const conn = yield* Transport.connectClient<NodeMessage>({
      ...options,
      messageSchema: NodeMessage as never,
      fastPath: nodeMessageFastPath,
      onMessage: (m) => {
        if (m._tag !== "ClientChosen" && m._tag !== "ClientFailed" && m._tag !== "ClientStatusReply") return
        const w = waiting.get(m.id)
        waiting.delete(m.id)
        w?.(m)
      }
    })
    yield* Effect.forkScoped(
      // Only ends (Cause.Done) when the connection closes.
      Queue.takeAll(conn.inbound).pipe(
        Effect.forever,
        // Connection closed: fail everything still waiting.
        Effect.ensuring(Effect.sync(() => {
          for (const w of waiting.values()) w(undefined)
          waiting.clear()
        }))
      )
    )

    const request = (make: (id: number) => ClientMessage) =>
      Effect.callback<Reply, ClientDisconnected>((resume) => {
        const id = nextId++
        waiting.set(id, (reply) =>
          resume(reply === undefined ? Effect.fail(new ClientDisconnected({ message: "connection closed" })) : Effect.succeed(reply))
        )
        // send only queues the frame (no waiting), so it can run right here.
        Effect.runSync(conn.send(make(id)))
        return Effect.sync(() => waiting.delete(id))
      })

    const propose = (value: Uint8Array): Effect.Effect<Position, ProposeError | ClientDisconnected> =>
      Effect.flatMap(request((id) => ({ _tag: "ClientPropose", id, value })), (r): Effect.Effect<Position, ProposeError | ClientDisconnected> =>
        r._tag === "ClientChosen"
          ? Effect.succeed({ instance: r.instance, index: r.index })
          : r._tag === "ClientFailed"
          ? Effect.fail(r.error)
          : Effect.fail(new ClientDisconnected({ message: `unexpected ${r._tag}` })))

    const status = Effect.flatMap(request((id) => ({ _tag: "ClientStatus", id })), (r) =>
      r._tag === "ClientStatusReply"
        ? Effect.succeed({ role: r.role, chosenUpTo: r.chosenUpTo })
        : Effect.fail(new ClientDisconnected({ message: `unexpected ${r._tag}` })))

    return { propose, status } satisfies PaxosClient
  })
