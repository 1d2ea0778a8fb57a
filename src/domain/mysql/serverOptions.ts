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

/**
 * The keys of `extra` that would set a protected option: also an unambiguous prefix of
 * one, which mariadbd accepts as that option (`sync_bin=0` is `sync_binlog=0`).
 */
export const protectedServerOptions = (extra: Readonly<Record<string, unknown>>): ReadonlyArray<string> =>
  Object.keys(extra).filter((key) => {
    const k = normalize(key)
    return k.length > 0 && PROTECTED.some((p) => p === k || p.startsWith(k))
  })
