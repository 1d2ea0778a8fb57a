/**
 * Issues a cluster's certificates with the openssl command-line tool (`certs` command,
 * docs/operations.md "Peer TLS"): a CA made for this cluster only, and per node a key and
 * a certificate naming `node-<id>` (CN and DNS name) and its host address (IP name, so
 * MySQL clients can verify the node's MariaDB by address). ECDSA P-256. An existing CA in
 * the directory is reused, so nodes added later get certificates of the same CA. Keys are
 * written 0600, the directory 0700.
 */
import { Data, Effect } from "effect"
import { execFile } from "node:child_process"
import { chmodSync, existsSync, mkdirSync, rmSync, writeFileSync } from "node:fs"
import { isIP } from "node:net"
import { join } from "node:path"
import { nodeCertName } from "../../domain/wire/peerIdentity.js"

export class CertificateError extends Data.TaggedError("CertificateError")<{ readonly message: string }> {}

/** What `issue` wrote: paths of the CA, of each node's files, and of the clients' server certificate. */
export interface IssuedCertificates {
  readonly ca: string
  readonly nodes: ReadonlyArray<{ readonly nodeId: number; readonly cert: string; readonly key: string }>
  /** `server.crt`/`server.key`: what MySQL clients see on every node (mariadb.ssl), naming every address given. */
  readonly server?: { readonly cert: string; readonly key: string } | undefined
}

const openssl = (args: ReadonlyArray<string>) =>
  Effect.callback<void, CertificateError>((resume) => {
    execFile("openssl", [...args], { timeout: 30_000 }, (error, _stdout, stderr) => {
      if (error === null) return resume(Effect.void)
      const missing = (error as NodeJS.ErrnoException).code === "ENOENT"
      resume(Effect.fail(new CertificateError({
        message: missing ? "the openssl command is not installed (Debian/Ubuntu: apt-get install openssl)" : `openssl ${args[0]}: ${String(stderr).trim() || error.message}`
      })))
    })
  })

const EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]

/**
 * Creates (or reuses) the CA in `dir` and a certificate for each node; `hosts` maps a node
 * id to its address(es) for the certificate's IP or DNS names (MariaDB clients check them).
 */
export const issue = (options: {
  readonly dir: string
  readonly clusterId: string
  readonly nodes: ReadonlyArray<number>
  readonly hosts?: ReadonlyMap<number, ReadonlyArray<string>>
  readonly days?: number
  /** Also (re)issue `server.crt`, the certificate MySQL clients see, naming every host given. */
  readonly server?: boolean
}): Effect.Effect<IssuedCertificates, CertificateError> =>
  Effect.gen(function*() {
    const { dir } = options
    const days = String(options.days ?? 825)
    yield* Effect.try({
      try: () => {
        mkdirSync(dir, { recursive: true, mode: 0o700 })
        chmodSync(dir, 0o700)
      },
      catch: (e) => new CertificateError({ message: `cannot create ${dir}: ${String(e)}` })
    })
    const ca = join(dir, "ca.crt")
    const caKey = join(dir, "ca.key")
    if (!existsSync(caKey)) {
      yield* openssl([
        "req", "-x509", ...EC_KEY, "-keyout", caKey, "-out", ca, "-days", "3650",
        "-subj", `/O=phxmaria/OU=${options.clusterId.replace(/[/=+,]/g, "_")}/CN=phxmaria cluster CA`,
        "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign"
      ])
      chmodSync(caKey, 0o600)
    }
    /** A key and a certificate of the CA named `name`, for `names` (subjectAltName), of `usage`. */
    const issueOne = (name: string, commonName: string, names: ReadonlyArray<string>, usage: string) =>
      Effect.gen(function*() {
        const key = join(dir, `${name}.key`)
        const cert = join(dir, `${name}.crt`)
        const csr = join(dir, `${name}.csr`)
        const ext = join(dir, `${name}.ext`)
        writeFileSync(ext, [
          `subjectAltName=${names.map((h) => (isIP(h) !== 0 ? `IP:${h}` : `DNS:${h}`)).join(",")}`,
          "basicConstraints=critical,CA:FALSE",
          "keyUsage=critical,digitalSignature",
          `extendedKeyUsage=${usage}`
        ].join("\n") + "\n")
        yield* openssl(["req", "-new", ...EC_KEY, "-keyout", key, "-out", csr, "-subj", `/O=phxmaria/CN=${commonName}`])
        chmodSync(key, 0o600)
        yield* openssl(["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", caKey, "-CAcreateserial", "-days", days, "-out", cert, "-extfile", ext])
        rmSync(csr, { force: true })
        rmSync(ext, { force: true })
        return { cert, key }
      })
    const nodes: Array<IssuedCertificates["nodes"][number]> = []
    for (const nodeId of options.nodes) {
      const name = nodeCertName(nodeId)
      nodes.push({ nodeId, ...yield* issueOne(name, name, [name, ...(options.hosts?.get(nodeId) ?? [])], "serverAuth,clientAuth") })
    }
    // One certificate for clients on every node: a client reaches the master's MariaDB through any node's port.
    const everyHost = [...new Set([...(options.hosts?.values() ?? [])].flat())]
    const server = options.server === true
      ? yield* issueOne("server", "phxmaria cluster", [...new Set([...everyHost, "127.0.0.1", "localhost"])], "serverAuth")
      : undefined
    return { ca, nodes, server }
  })
