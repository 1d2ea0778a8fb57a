/**
 * What a binlog server answers to the queries a MariaDB 10.11 replica's IO thread sends
 * before COM_BINLOG_DUMP (docs/mariadb.md, "Replication protocol, master side"), and the
 * session settings those queries carry. Pure: the server turns answers into packets.
 */
import { type Gtid, parseGtid } from "../cluster/gtid.js"

export interface ReplicaSession {
  /** The replica's GTID position ("" means from the start); set by SET @slave_connect_state. */
  readonly connectState: string | undefined
  readonly heartbeatPeriodNs: number | undefined
  readonly checksum: string | undefined
  readonly capability: number | undefined
  readonly semiSync: boolean
}

export const newReplicaSession: ReplicaSession = {
  connectState: undefined,
  heartbeatPeriodNs: undefined,
  checksum: undefined,
  capability: undefined,
  semiSync: false
}

export type QueryAnswer =
  | { readonly _tag: "Ok" }
  | { readonly _tag: "ResultSet"; readonly columns: ReadonlyArray<string>; readonly rows: ReadonlyArray<ReadonlyArray<string | null>> }
  | { readonly _tag: "Error"; readonly code: number; readonly sqlState: string; readonly message: string }

const ok: QueryAnswer = { _tag: "Ok" }
const rows = (columns: ReadonlyArray<string>, ...data: ReadonlyArray<ReadonlyArray<string | null>>): QueryAnswer => ({
  _tag: "ResultSet",
  columns,
  rows: data
})

/** A SET value: 'text', a number, or @@global.binlog_checksum (we serve CRC32). */
const setValue = (raw: string): string => {
  const v = raw.trim()
  const quoted = /^'((?:[^'\\]|\\.)*)'$/.exec(v) ?? /^"((?:[^"\\]|\\.)*)"$/.exec(v)
  if (quoted !== null) return quoted[1]!
  if (/^@@global\.binlog_checksum$/i.test(v)) return "CRC32"
  return v
}

export const answerQuery = (
  sql: string,
  session: ReplicaSession,
  server: { readonly serverId: number; readonly nowSeconds: number }
): readonly [QueryAnswer, ReplicaSession] => {
  const q = sql.trim().replace(/;\s*$/, "")
  if (/^select\s+unix_timestamp\(\)$/i.test(q)) return [rows(["UNIX_TIMESTAMP()"], [String(server.nowSeconds)]), session]
  if (/^show\s+variables\s+like\s+'server_id'$/i.test(q)) {
    return [rows(["Variable_name", "Value"], ["server_id", String(server.serverId)]), session]
  }
  if (/^select\s+@master_binlog_checksum$/i.test(q)) return [rows(["@master_binlog_checksum"], [session.checksum ?? null]), session]
  if (/^select\s+@@global\.gtid_domain_id$/i.test(q)) return [rows(["@@GLOBAL.gtid_domain_id"], ["0"]), session]
  // Semi-sync toward replicas is not offered: an empty answer makes a replica go on asynchronously.
  if (/^show\s+variables\s+like\s+'rpl_semi_sync_master_enabled'$/i.test(q)) return [rows(["Variable_name", "Value"]), session]
  const set = /^set\s+@(\w+)\s*=\s*(.+)$/is.exec(q)
  if (set !== null) {
    const name = set[1]!.toLowerCase()
    const value = setValue(set[2]!)
    switch (name) {
      case "slave_connect_state":
        return [ok, { ...session, connectState: value }]
      case "master_heartbeat_period":
        return [ok, { ...session, heartbeatPeriodNs: Number(value) }]
      case "master_binlog_checksum":
        return [ok, { ...session, checksum: value }]
      case "mariadb_slave_capability":
        return [ok, { ...session, capability: Number(value) }]
      case "rpl_semi_sync_slave":
        return [ok, { ...session, semiSync: value === "1" }]
      default:
        return [ok, session] // slave_gtid_strict_mode, slave_gtid_ignore_duplicates, ...
    }
  }
  return [{ _tag: "Error", code: 1064, sqlState: "42000", message: `this binlog server does not answer: ${q.slice(0, 200)}` }, session]
}

/**
 * The replica's position in the cluster's domain from its connect state ("D-S-N,D-S-N"):
 * null for an empty state (start from the beginning); an error text when it cannot be used.
 */
export const positionFromConnectState = (state: string | undefined, domain = 0): Gtid | null | { readonly error: string } => {
  if (state === undefined || state.trim() === "") return null
  const gtids = state.split(",").map((s) => s.trim()).filter((s) => s !== "")
  const parsed = gtids.map(parseGtid)
  if (parsed.some((g) => g === undefined)) return { error: `malformed GTID connect state '${state}'` }
  const inDomain = parsed.filter((g): g is Gtid => g!.domain === domain)
  if (inDomain.length !== gtids.length) {
    return { error: `connect state '${state}' has GTIDs outside domain ${domain}, which this cluster does not serve` }
  }
  return inDomain[0] ?? null
}
