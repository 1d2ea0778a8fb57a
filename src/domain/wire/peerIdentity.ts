/**
 * How a node is named in its certificate (docs/operations.md, "Peer TLS"): the subject CN
 * and a DNS subjectAltName `node-<id>`. A dialer asks for that name (TLS servername), so
 * the standard host check proves it reached the node it meant; a listener reads the CN
 * to learn who dialed.
 */
export const nodeCertName = (nodeId: number): string => `node-${nodeId}`

/** The node id a certificate's subject CN names, or undefined (not a node certificate). */
export const nodeIdOfCertName = (commonName: string | undefined): number | undefined => {
  const m = /^node-([1-9][0-9]{0,9})$/.exec(commonName ?? "")
  return m === null ? undefined : Number(m[1])
}
