/**
 * Mutual TLS between agents (docs/operations.md, "Peer TLS"): every node holds a
 * certificate of the cluster's own CA naming it `node-<id>`. Listeners (peer port, forward
 * ports) ask for a client certificate and drop a connection without a valid one in the
 * TLS handshake, before any byte of ours is read; dialers check that the listener's
 * certificate names the node they meant. TLS 1.3 only.
 */
import { Data, Effect } from "effect"
import { createPrivateKey, X509Certificate } from "node:crypto"
import { readFileSync } from "node:fs"
import type * as tls from "node:tls"
import { nodeCertName, nodeIdOfCertName } from "../../domain/wire/peerIdentity.js"

export class PeerTlsError extends Data.TaggedError("PeerTlsError")<{ readonly message: string }> {}

/** A node's TLS material, read once at start. */
export interface PeerTls {
  readonly nodeId: number
  readonly ca: Buffer
  readonly cert: Buffer
  readonly key: Buffer
}

/** The file paths in a node's config (`tls`). */
export interface PeerTlsFiles {
  readonly ca: string
  readonly cert: string
  readonly key: string
}

/** The CN of a certificate's subject ("CN=..." line of X509Certificate.subject). */
const commonNameOf = (subject: string): string | undefined =>
  subject.split("\n").find((l) => l.startsWith("CN="))?.slice(3)

/** Reads the files (none configured: undefined, plain TCP) and checks that the certificate is this node's and is signed by the CA. */
export const loadOptional = (files: PeerTlsFiles | undefined, nodeId: number): Effect.Effect<PeerTls | undefined, PeerTlsError> =>
  files === undefined ? Effect.succeed(undefined) : load(files, nodeId)

/** Reads the files and checks that the certificate is this node's and is signed by the CA. */
export const load = (files: PeerTlsFiles, nodeId: number): Effect.Effect<PeerTls, PeerTlsError> =>
  Effect.try({
    try: () => {
      const read = (what: string, path: string) => {
        try {
          return readFileSync(path)
        } catch (e) {
          throw new PeerTlsError({ message: `tls.${what}: cannot read ${path}: ${e instanceof Error ? e.message : String(e)}` })
        }
      }
      const ca = read("ca", files.ca)
      const cert = read("cert", files.cert)
      const key = read("key", files.key)
      const parsed = new X509Certificate(cert)
      const named = nodeIdOfCertName(commonNameOf(parsed.subject))
      if (named !== nodeId) {
        throw new PeerTlsError({ message: `tls.cert ${files.cert} names ${commonNameOf(parsed.subject) ?? "no CN"}, not ${nodeCertName(nodeId)} (issue one with: certs --out DIR --nodes ${nodeId})` })
      }
      if (!parsed.verify(new X509Certificate(ca).publicKey)) {
        throw new PeerTlsError({ message: `tls.cert ${files.cert} is not signed by tls.ca ${files.ca}` })
      }
      if (!parsed.checkPrivateKey(createPrivateKey(key))) throw new PeerTlsError({ message: `tls.key ${files.key} does not belong to tls.cert ${files.cert}` })
      return { nodeId, ca, cert, key }
    },
    catch: (e) => e instanceof PeerTlsError ? e : new PeerTlsError({ message: `tls: ${e instanceof Error ? e.message : String(e)}` })
  })

/** Options of a listener that takes only peers holding a certificate of the cluster's CA. */
export const serverOptions = (t: PeerTls): tls.TlsOptions => ({
  ca: t.ca,
  cert: t.cert,
  key: t.key,
  requestCert: true,
  rejectUnauthorized: true,
  minVersion: "TLSv1.3",
  // A dialer that never finishes its handshake is dropped soon.
  handshakeTimeout: 5_000
})

/**
 * Options of a dial to node `nodeId` (undefined: any node of the cluster, e.g. a client of
 * the log): the listener's certificate must be the cluster CA's and name that node.
 */
export const clientOptions = (t: PeerTls, nodeId: number | undefined): tls.ConnectionOptions => ({
  ca: t.ca,
  cert: t.cert,
  key: t.key,
  minVersion: "TLSv1.3",
  ...(nodeId !== undefined
    ? { servername: nodeCertName(nodeId) }
    : { checkServerIdentity: (_host: string, cert: tls.PeerCertificate) => nodeIdOf(cert) !== undefined ? undefined : new Error("not a node certificate") })
})

const nodeIdOf = (cert: tls.PeerCertificate): number | undefined => {
  const cn = cert.subject?.CN as string | ReadonlyArray<string> | undefined
  return nodeIdOfCertName(typeof cn === "string" ? cn : cn?.[0])
}

/** The node id an authenticated TLS peer's certificate names (undefined: none, or not TLS). */
export const peerNodeId = (socket: { readonly getPeerCertificate?: () => tls.PeerCertificate; readonly authorized?: boolean }): number | undefined => {
  if (socket.getPeerCertificate === undefined || socket.authorized !== true) return undefined
  return nodeIdOf(socket.getPeerCertificate())
}

/** The certificate clients see (mariadb.ssl): read, and checked to match its key. */
export const loadClientTls = (files: { readonly cert: string; readonly key: string }): Effect.Effect<{ readonly cert: Buffer; readonly key: Buffer }, PeerTlsError> =>
  Effect.try({
    try: () => {
      const cert = readFileSync(files.cert)
      const key = readFileSync(files.key)
      if (!new X509Certificate(cert).checkPrivateKey(createPrivateKey(key))) throw new Error(`${files.key} does not belong to ${files.cert}`)
      return { cert, key }
    },
    catch: (e) => new PeerTlsError({ message: `mariadb.ssl: ${e instanceof Error ? e.message : String(e)}` })
  })
