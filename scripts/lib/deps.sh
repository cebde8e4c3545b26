# shellcheck shell=bash
# Installs the system packages the tests need (PostgreSQL, memcached) when
# they are missing. Source scripts/lib/common.sh first.

# True when a PostgreSQL server (initdb) is installed, or CM_PG_BIN points to one.
cm_have_postgres() {
    if [[ -n ${CM_PG_BIN:-} && -x ${CM_PG_BIN}/initdb ]]; then
        return 0
    fi
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

# True when memcached is installed.
cm_have_memcached() {
    command -v memcached >/dev/null 2>&1 || [[ -x /usr/bin/memcached ]]
}

# Installs whatever of postgresql and memcached is missing, with one
# `apt-get update` first. Needs root when anything is missing.
cm_ensure_system_deps() {
    local missing=()
    cm_have_postgres || missing+=(postgresql)
    cm_have_memcached || missing+=(memcached)
    if ((${#missing[@]} == 0)); then
        return 0
    fi
    if [[ $(id -u) -ne 0 ]]; then
        cm_die "missing ${missing[*]}; install as root: apt-get install -y ${missing[*]}"
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        cm_die "missing ${missing[*]} and no apt-get to install them with"
    fi
    cm_section "installing ${missing[*]}"
    local log
    log=$(mktemp -t cm-apt.XXXXXX)
    cm_quietly "$log" env DEBIAN_FRONTEND=noninteractive apt-get update -q ||
        cm_die "apt-get update failed"
    cm_quietly "$log" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}" ||
        cm_die "apt-get install ${missing[*]} failed"
    rm -f "$log"
    cm_have_postgres || cm_die "postgresql installed, but no /usr/lib/postgresql/*/bin/initdb"
    cm_have_memcached || cm_die "memcached installed, but not found"
}

# Installs psycopg (3) for python3 with pip when it cannot be imported: the
# randomized end-to-end test (crates/e2e) writes through it. Needs python3.
cm_ensure_psycopg() {
    if python3 -c 'import psycopg' >/dev/null 2>&1; then
        return 0
    fi
    command -v python3 >/dev/null 2>&1 || cm_die "python3 is missing; install it (apt-get install -y python3 python3-pip)"
    cm_section "installing psycopg (pip)"
    local log
    log=$(mktemp -t cm-pip.XXXXXX)
    # Debian's python3 refuses installs outside a virtualenv (PEP 668)
    # unless told otherwise; the flag is only passed where that applies.
    local flags=()
    if python3 -m pip install --help 2>/dev/null | grep -q -- --break-system-packages; then
        flags+=(--break-system-packages)
    fi
    cm_quietly "$log" python3 -m pip install -q "${flags[@]}" 'psycopg[binary]' ||
        cm_die "pip install 'psycopg[binary]' failed (is python3-pip installed?)"
    rm -f "$log"
    python3 -c 'import psycopg' >/dev/null 2>&1 || cm_die "psycopg installed, but python3 cannot import it"
}

# Installs curl when it is missing (scripts/demo talks to the example
# service with it). Needs root and apt-get then.
cm_ensure_curl() {
    if command -v curl >/dev/null 2>&1; then
        return 0
    fi
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        cm_die "curl is missing; install it (apt-get install -y curl)"
    fi
    cm_section "installing curl"
    local log
    log=$(mktemp -t cm-apt.XXXXXX)
    cm_quietly "$log" env DEBIAN_FRONTEND=noninteractive apt-get update -q ||
        cm_die "apt-get update failed"
    cm_quietly "$log" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends curl ca-certificates ||
        cm_die "apt-get install curl failed"
    rm -f "$log"
}
