/**
 * Application users made through the log (`user add`; docs/operations.md, "The first
 * user"): what may be asked, checked before any statement runs, and the statements. Pure.
 *
 * Only privileges that keep a session inside the cluster's rules are offered: anything that
 * passes read_only (SUPER, READ ONLY ADMIN, ALL on *.*) would let a session write on a
 * replica's RO port, and a write the log does not have marks that node diverged.
 */
import { Result } from "effect"
import { nativePasswordHash } from "./protocol.js"

/** Privileges on a database or table (ALL there does not include the global READ ONLY ADMIN). */
const OBJECT_PRIVILEGES = new Set([
  "ALL", "ALL PRIVILEGES", "SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "REFERENCES", "INDEX", "ALTER",
  "CREATE TEMPORARY TABLES", "LOCK TABLES", "EXECUTE", "CREATE VIEW", "SHOW VIEW", "CREATE ROUTINE", "ALTER ROUTINE",
  "EVENT", "TRIGGER", "DELETE HISTORY"
])
/** Global privileges that only read (monitoring users). */
const MONITOR_PRIVILEGES = new Set(["PROCESS", "SHOW DATABASES", "BINLOG MONITOR", "REPLICATION CLIENT", "SLAVE MONITOR", "REPLICA MONITOR"])

/** A name part of GRANT ... ON: `*`, a plain identifier, or a backquoted one (no backquote, no NUL inside). */
const NAME = "(\\*|[A-Za-z0-9_$]{1,64}|`[^`\\x00]{1,64}`)"
const TARGET = new RegExp(`^${NAME}\\.${NAME}$`)

/** The server's own schemas: rights there (mysql.global_priv above all) give every other right at the next restart. */
const SYSTEM_SCHEMAS = new Set(["mysql", "sys", "performance_schema", "information_schema"])

/**
 * Accounts the cluster itself uses or MariaDB owns: changing one (a password replicated to
 * every node) would lock the agents out of their own servers or break replication.
 */
export const RESERVED_USERS: ReadonlyArray<string> = ["root", "mysql", "mariadb.sys", "PUBLIC"]
/** Names the agents make for themselves (the replication login). */
const RESERVED_PREFIX = "phxmaria_"

export interface Grant {
  readonly privileges: ReadonlyArray<string>
  /** `db.table` as GRANT ... ON takes it: checked names, `_` in a database name escaped (it is a wildcard there). */
  readonly on: string
}

/** "SELECT, INSERT ON shop.*" as a grant, or why it is not one this command makes. */
export const parseGrant = (spec: string): Result.Result<Grant, string> => {
  const m = /^\s*(.+?)\s+ON\s+(.+?)\s*$/i.exec(spec)
  if (m === null) return Result.fail(`grant "${spec}": expected "PRIVILEGE[, ...] ON db.table" (e.g. "SELECT, INSERT ON shop.*")`)
  const privileges = m[1]!.split(",").map((p) => p.trim().replace(/\s+/g, " ").toUpperCase())
  const on = m[2]!
  const dot = TARGET.exec(on)
  if (dot === null) {
    return Result.fail(`grant "${spec}": "${on}" is not db.table (names of letters, digits, _ and $, or in backquotes; * for all)`)
  }
  const [db, table] = [dot[1]!, dot[2]!]
  const bare = db.replace(/^`|`$/g, "")
  if (SYSTEM_SCHEMAS.has(bare.toLowerCase())) return Result.fail(`grant "${spec}": ${bare} is the server's own schema: rights there give every other right`)
  // In a database name % and _ are wildcards (a grant on several databases, the system ones too): % and \ are refused, _ taken literally.
  if (/[%\\]/.test(bare)) return Result.fail(`grant "${spec}": a database name with % or \\ (wildcards) is not offered: name the database`)
  const global = db === "*"
  for (const p of privileges) {
    if (global && (p === "ALL" || p === "ALL PRIVILEGES")) {
      return Result.fail(`grant "${spec}": ALL on *.* includes READ ONLY ADMIN, which lets a session write on a replica and diverge it: grant on a database (db.*) instead`)
    }
    if (global && OBJECT_PRIVILEGES.has(p)) {
      return Result.fail(`grant "${spec}": ${p} on *.* reaches the server's own schema (password hashes, privileges): grant it on a database (db.*)`)
    }
    const allowed = OBJECT_PRIVILEGES.has(p) || (global && MONITOR_PRIVILEGES.has(p))
    if (!allowed) {
      return Result.fail(
        MONITOR_PRIVILEGES.has(p)
          ? `grant "${spec}": ${p} is a global privilege: grant it ON *.*`
          : `grant "${spec}": ${p} is not offered (privileges that pass read_only or write outside the log would let a session diverge a replica; an operator may grant others as root on the master's socket)`
      )
    }
  }
  const literal = global ? "*" : db.startsWith("`") ? `\`${bare.replace(/_/g, "\\_")}\`` : db.replace(/_/g, "\\_")
  // A plain name with \_ must be quoted to be one identifier.
  const dbPart = global || !literal.includes("\\") || literal.startsWith("`") ? literal : `\`${literal}\``
  return Result.succeed({ privileges, on: `${dbPart}.${table}` })
}

/** MariaDB's mysql_native_password hash of `password` (what IDENTIFIED BY PASSWORD takes): the password itself never travels. */
export const nativePasswordHashHex = (password: string): string =>
  `*${Buffer.from(nativePasswordHash(password)).toString("hex").toUpperCase()}`

export interface NewUser {
  readonly name: string
  readonly host: string
  /** mysql_native_password hash: `*` and 40 hex digits. */
  readonly hash: string
  readonly grants: ReadonlyArray<Grant>
  /** The user may exist already: its password is set and the grants added. */
  readonly update: boolean
}

/** The request's fields checked (every problem at once), or the problems. */
export const checkNewUser = (fields: {
  readonly name: string | null
  readonly host: string | null
  readonly hash: string | null
  readonly grants: ReadonlyArray<string>
  readonly update: boolean
  /** More names this node uses itself (the agent's own login). */
  readonly reserved?: ReadonlyArray<string> | undefined
}): Result.Result<NewUser, ReadonlyArray<string>> => {
  const problems: Array<string> = []
  const name = fields.name ?? ""
  const host = fields.host ?? "%"
  // Quotes and backslashes are refused too: a server with sql_mode NO_BACKSLASH_ESCAPES reads escapes differently.
  if (name.length === 0 || name.length > 128 || /[\x00-\x1f'"`\\]/.test(name)) problems.push("name: 1 to 128 characters, no control characters, quotes or backslashes")
  else if (RESERVED_USERS.some((r) => r.toLowerCase() === name.toLowerCase()) || name.toLowerCase().startsWith(RESERVED_PREFIX) || fields.reserved?.includes(name) === true) {
    problems.push(`name: ${name} is an account the cluster or MariaDB uses itself: changing it would lock the agents out or break replication`)
  }
  if (host.length === 0 || host.length > 255 || !/^[A-Za-z0-9%_.:\-/]+$/.test(host)) problems.push(`host: a host name, an address, a pattern with % or _, or address/netmask (got "${host.slice(0, 60)}")`)
  const hash = fields.hash ?? ""
  if (!/^\*[0-9A-F]{40}$/.test(hash)) problems.push("hash: the password's mysql_native_password hash (* and 40 hex digits; the CLI computes it from --password-file)")
  const grants: Array<Grant> = []
  for (const spec of fields.grants) {
    const g = parseGrant(spec)
    if (Result.isFailure(g)) problems.push(g.failure)
    else grants.push(g.success)
  }
  return problems.length > 0 ? Result.fail(problems) : Result.succeed({ name, host, hash, grants, update: fields.update })
}

/** The statements that make the user (each binlogged, so it reaches every node through the log). */
export const userStatements = (u: NewUser): ReadonlyArray<{ readonly sql: string; readonly params: ReadonlyArray<unknown> }> => [
  ...(u.update
    ? [
      { sql: "CREATE USER IF NOT EXISTS ?@? IDENTIFIED BY PASSWORD ?", params: [u.name, u.host, u.hash] },
      { sql: "ALTER USER ?@? IDENTIFIED BY PASSWORD ?", params: [u.name, u.host, u.hash] }
    ]
    : [{ sql: "CREATE USER ?@? IDENTIFIED BY PASSWORD ?", params: [u.name, u.host, u.hash] }]),
  ...u.grants.map((g) => ({ sql: `GRANT ${g.privileges.join(", ")} ON ${g.on} TO ?@?`, params: [u.name, u.host] }))
]
