/**
 * my.cnf options of a managed mariadbd that the cluster's safety rests on
 * (docs/operations.md, "MariaDB settings the agent owns"): `mariadb.extraConfig` may not
 * set them. Durability, the semi-sync wait that holds a commit until the log has chosen it,
 * crash truncation (init-rpl-role), the listen address, PROXY-header trust, TLS, the
 * storage engine and the binlog's shape.
 */
const PROTECTED = [
  "sync_binlog",
  "innodb_flush_log_at_trx_commit",
  "innodb_doublewrite",
  "init_rpl_role",
  "rpl_semi_sync_master_enabled",
  "rpl_semi_sync_master_timeout",
  "rpl_semi_sync_master_wait_point",
  "rpl_semi_sync_master_wait_no_slave",
  "rpl_semi_sync_slave_enabled",
  "bind_address",
  "port",
  "socket",
  "datadir",
  "user",
  "server_id",
  "read_only",
  "proxy_protocol_networks",
  "enforce_storage_engine",
  "log_bin",
  "binlog_format",
  "binlog_checksum",
  "log_bin_compress",
  "gtid_strict_mode",
  "gtid_domain_id",
  "log_slave_updates",
  "skip_slave_start",
  "require_secure_transport",
  "ssl_cert",
  "ssl_key",
  "ssl_ca"
]

/** How mariadbd reads an option name: case and `-`/`_` do not matter, nor a loose-/skip-/enable-/disable- prefix. */
const normalize = (key: string): string => {
  let k = key.trim().toLowerCase().replace(/-/g, "_")
  for (let changed = true; changed;) {
    changed = false
    for (const prefix of ["loose_", "skip_", "enable_", "disable_", "maximum_"]) {
      if (k.startsWith(prefix)) {
        k = k.slice(prefix.length)
        changed = true
      }
    }
  }
  return k
}

/** Whether `key` sets `option` as mariadbd reads it: the option, or a prefix of it (which mariadbd takes for it when unambiguous). */
const sets = (key: string, option: string): boolean => {
  const k = normalize(key)
  return k.length > 0 && option.startsWith(k)
}

/**
 * The keys of `extra` that would set a protected option: also an unambiguous prefix of
 * one, which mariadbd accepts as that option (`sync_bin=0` is `sync_binlog=0`).
 */
export const protectedServerOptions = (extra: Readonly<Record<string, unknown>>): ReadonlyArray<string> =>
  Object.keys(extra).filter((key) => PROTECTED.some((p) => sets(key, p)))

/**
 * Server options that have a key of their own in `mariadb` (sized or validated there, and
 * known to the other checks): `extraConfig` may not set them.
 */
export const FIRST_CLASS_OPTIONS: Readonly<Record<string, string>> = {
  innodb_buffer_pool_size: "mariadb.bufferPoolMb",
  max_connections: "mariadb.maxConnections",
  character_set_server: "mariadb.characterSet",
  collation_server: "mariadb.collation"
}

/** The keys of `extra` that would set a first-class option, each with the config key to use instead. */
export const firstClassServerOptions = (
  extra: Readonly<Record<string, unknown>>
): ReadonlyArray<{ readonly key: string; readonly use: string }> =>
  Object.keys(extra).flatMap((key) => {
    const option = Object.keys(FIRST_CLASS_OPTIONS).find((o) => sets(key, o))
    return option === undefined ? [] : [{ key, use: FIRST_CLASS_OPTIONS[option]! }]
  })

/**
 * The keys of `extra` that cannot be written as one my.cnf line: a key of other characters
 * than an option name has, or a value with a line break (which would add a line of its own,
 * past every check above) or that begins or ends with spaces (my.cnf strips them).
 */
export const malformedServerOptions = (extra: Readonly<Record<string, unknown>>): ReadonlyArray<string> =>
  Object.entries(extra).filter(([key, value]) =>
    !/^[A-Za-z0-9_.-]+$/.test(key) || (typeof value === "string" && (/[\r\n\0]/.test(value) || value.trim() !== value))
  ).map(([key]) => key)

/** A character set or collation name as mariadbd knows them (written into my.cnf: nothing else). */
export const isCharsetName = (name: string): boolean => /^[A-Za-z0-9_]{1,64}$/.test(name)

/** MariaDB's `utf8` is `utf8mb3` (10.6 and later name its collations either way). */
const charsetAlias = (name: string): string => {
  const n = name.toLowerCase()
  return n === "utf8" ? "utf8mb3" : n.startsWith("utf8_") ? `utf8mb3_${n.slice(5)}` : n
}

/** Whether `collation` belongs to `characterSet` by MariaDB's naming: `<charset>_...`, or `binary` for `binary`. */
export const collationBelongsTo = (collation: string, characterSet: string): boolean => {
  const c = charsetAlias(collation)
  const s = charsetAlias(characterSet)
  return s === "binary" ? c === "binary" : c.startsWith(`${s}_`)
}

export const DEFAULT_CHARACTER_SET = "utf8mb4"
/** What Debian's own MariaDB config sets (50-server.cnf). */
export const DEFAULT_COLLATION = "utf8mb4_general_ci"
/** The collation a managed server gets: the configured one, else utf8mb4's default above, else the character set's own default (none given). */
export const collationFor = (characterSet: string, collation: string | undefined): string | undefined =>
  collation ?? (charsetAlias(characterSet) === DEFAULT_CHARACTER_SET ? DEFAULT_COLLATION : undefined)

export const DEFAULT_MAX_CONNECTIONS = 1000
/**
 * Connections a managed server keeps for the agent's own logins, over `mariadb.maxConnections`
 * (max_connections is their sum): its pool (8), the binlog captures (2), a copy for a peer's
 * rebuild (mariadb-backup, 2), pings, with room to spare.
 */
export const AGENT_CONNECTIONS = 32

/**
 * The buffer pool of a managed server on a machine with `totalMemoryBytes`: half of it (a
 * dedicated database machine; the agent and the OS live in the rest), rounded down to a
 * multiple of 128 MiB (InnoDB's chunk size), at least 128 MiB.
 */
export const defaultBufferPoolMb = (totalMemoryBytes: number): number =>
  Math.max(128, Math.floor(totalMemoryBytes / 2 / (128 * 1024 * 1024)) * 128)
