#!/usr/bin/env bash
# Prepares a fresh Debian/Ubuntu machine (as root) to build and test phxmaria:
# MariaDB server + client binaries, Node.js/npm, npm dependencies, build.
# Idempotent: safe to run again. Never starts the system MariaDB service; if
# installing the packages here started it, it is stopped again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { echo "setup: $*"; }

# A binary on PATH or in /usr/sbin, /usr/bin (non-login shells may lack /usr/sbin).
have() {
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]
}

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
fi

apt_updated=0
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    log "apt-get not found; install $* by hand" >&2
    exit 1
  fi
  if [ "$apt_updated" -eq 0 ]; then
    log "apt-get update"
    $SUDO apt-get update -q
    apt_updated=1
  fi
  log "apt-get install $*"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

# Stops the system MariaDB service (only that one), used only right after this
# script installed the packages.
stop_system_mariadb() {
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    if systemctl is-active --quiet mariadb 2>/dev/null; then
      log "stopping the system mariadb service started by the package install"
      $SUDO systemctl stop mariadb
    fi
  elif command -v service >/dev/null 2>&1 && [ -x /etc/init.d/mariadb ]; then
    if $SUDO service mariadb status >/dev/null 2>&1; then
      log "stopping the system mariadb service started by the package install"
      $SUDO service mariadb stop || true
    fi
  fi
}

# 1. MariaDB binaries (tests and nodes run their own mariadbd instances).
if have mariadbd && have mariadb-install-db && have mariadb; then
  log "mariadb: present"
else
  apt_install mariadb-server mariadb-client
  stop_system_mariadb
fi

# 1a. mariadb-backup and mbstream: a rebuilding node copies a healthy peer's database.
if have mariadb-backup && have mbstream; then
  log "mariadb-backup: present"
else
  apt_install mariadb-backup
fi

# 1a'. openssl: `certs` (and demo) make the cluster's CA and node certificates with it.
if have openssl; then
  log "openssl: present"
else
  apt_install openssl
fi

# 1b. Benchmark tools (npm run bench:proxy): sysbench and haproxy, used as plain programs.
if have sysbench && have haproxy; then
  log "sysbench, haproxy: present"
else
  apt_install sysbench haproxy
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ] && systemctl is-active --quiet haproxy 2>/dev/null; then
    log "stopping the system haproxy service started by the package install"
    $SUDO systemctl stop haproxy
  fi
fi

# 1c. iptables: the fault suite's network partitions (rules between the nodes' loopback addresses).
if have iptables; then
  log "iptables: present"
else
  apt_install iptables
fi

# 1d. chromium: the status page's browser test drives it headless (playwright-core, /usr/bin/chromium).
if [ -x /usr/bin/chromium ]; then
  log "chromium: present"
else
  apt_install chromium
fi

# 1e. systemd-analyze: the deployment test verifies deploy/phxmaria@.service with it (nothing is started).
if have systemd-analyze; then
  log "systemd-analyze: present"
else
  apt_install systemd
fi

# 2. Node.js and npm (npm scripts then use Node 24 from the 'node' npm package).
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
  log "node $(node --version), npm $(npm --version): present"
else
  apt_install nodejs npm
fi

# 3. Dependencies and build.
if [ -f package-lock.json ]; then
  log "npm ci"
  npm ci --no-audit --no-fund
else
  log "npm install (no package-lock.json)"
  npm install --no-audit --no-fund
fi

log "npm run build"
npm run build

log "done"
