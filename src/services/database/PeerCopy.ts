/**
 * A rebuild's copy from a peer: GET /backup on the donor's admin port gives the donor's
 * cluster-state snapshot (header) and a mariadb-backup stream of its database (body).
 */
import { Data, Effect, Schema, type Scope } from "effect"
import { request, type IncomingMessage } from "node:http"
import { request as httpsRequest } from "node:https"
import * as PeerTls from "../tls/PeerTls.js"
import { type ClusterSnapshot, ClusterSnapshotData } from "../cluster/ClusterState.js"

export const SNAPSHOT_HEADER = "x-phxmaria-snapshot"
export const DATA_BYTES_HEADER = "x-phxmaria-data-bytes"

/** The donor could not be reached, refused, or sent something else than a copy. */
export class CopyFailed extends Data.TaggedError("CopyFailed")<{ readonly donor: string; readonly message: string }> {}

export interface PeerCopy {
  /** The donor's state when the copy began: its database holds at least everything below it. */
  readonly snapshot: ClusterSnapshot
  /** About how many bytes the copy is (the donor's datadir). */
  readonly dataBytes: number
  readonly body: IncomingMessage
}

export const encodeSnapshot = (snapshot: ClusterSnapshot): string =>
  Buffer.from(JSON.stringify(Schema.encodeSync(ClusterSnapshotData)(snapshot))).toString("base64")

const decodeSnapshot = Schema.decodeUnknownSync(ClusterSnapshotData)

/** Asks `host:port` for a copy; the response is destroyed when the scope closes. */
export const fetchCopy = (
  host: string,
  port: number,
  token?: string,
  /** Peer TLS: HTTPS with this node's certificate, to the donor node named. */
  secure?: { readonly tls: PeerTls.PeerTls; readonly donorId: number }
): Effect.Effect<PeerCopy, CopyFailed, Scope.Scope> => {
  const donor = `${host}:${port}`
  return Effect.acquireRelease(
    Effect.callback<IncomingMessage, CopyFailed>((resume) => {
      // The snapshot header carries the state's recent-transaction digests: well over Node's 16 KiB default.
      const asked = { host, port, path: "/backup", method: "GET", timeout: 120_000, maxHeaderSize: 8 * 1024 * 1024,
        ...(token !== undefined ? { headers: { authorization: `Bearer ${token}` } } : {}) }
      const onResponse = (res: IncomingMessage) => resume(Effect.succeed(res))
      const req = secure === undefined
        ? request(asked, onResponse)
        : httpsRequest({ ...asked, ...PeerTls.clientOptions(secure.tls, secure.donorId), agent: false }, onResponse)
      req.on("timeout", () => req.destroy(new Error("no answer within 120 s")))
      req.on("error", (e) => resume(Effect.fail(new CopyFailed({ donor, message: e.message }))))
      req.end()
      return Effect.sync(() => req.destroy())
    }),
    (res) => Effect.sync(() => res.destroy())
  ).pipe(
    Effect.flatMap((res) => {
      if (res.statusCode !== 200) {
        return Effect.flatMap(
          Effect.promise(async () => {
            let text = ""
            for await (const chunk of res) text = (text + String(chunk)).slice(0, 2000)
            return text
          }),
          (text) => Effect.fail(new CopyFailed({ donor, message: `HTTP ${res.statusCode}: ${text}` }))
        )
      }
      return Effect.try({
        try: (): PeerCopy => ({
          snapshot: decodeSnapshot(JSON.parse(Buffer.from(String(res.headers[SNAPSHOT_HEADER] ?? ""), "base64").toString("utf8"))),
          dataBytes: Number(res.headers[DATA_BYTES_HEADER] ?? 0) || 0,
          body: res
        }),
        catch: (e) => new CopyFailed({ donor, message: `no valid snapshot header: ${String(e)}` })
      })
    })
  )
}
