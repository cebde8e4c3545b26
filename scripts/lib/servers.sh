# shellcheck shell=bash
# Starts one PostgreSQL cluster and one memcached for a whole run
# (cm-test-servers from crates/testkit) and exports CM_TEST_PG_URL and
# CM_TEST_MEMCACHED for the tests. Source scripts/lib/common.sh first, run
# from the repository root, and call cm_stop_test_servers from an EXIT trap.

CM_SERVERS_PID=

# Starts the servers, waits for their env file (max 120 s) and sources it.
#   cm_start_test_servers DIR [--result-server] [--extra-memcached N]
# DIR receives `env` and `servers.log`. The memcached runs with -M (it never
# evicts, as metadata servers must not); --result-server adds a memcached that
# evicts, for results, exported as CM_TEST_MEMCACHED_RESULTS;
# --extra-memcached N adds N more -M memcached servers, exported
# comma-separated as CM_TEST_MEMCACHED_EXTRA. CM_SERVERS_PID is the
# starter's pid (memcached runs as its child; pg_ctl detaches PostgreSQL).
# With CM_TEST_SERVERS_BIN set (a built cm-test-servers), runs that binary
# instead of `cargo run` (which would build the debug profile).
cm_start_test_servers() {
    local dir=$1
    shift
    local env_file=$dir/env log=$dir/servers.log
    # `cargo run` execs the binary, so $! is the server process itself.
    if [[ -n ${CM_TEST_SERVERS_BIN:-} ]]; then
        "$CM_TEST_SERVERS_BIN" --env-file "$env_file" "$@" </dev/null >"$log" 2>&1 &
    else
        cargo run -q --locked -p cm-testkit --bin cm-test-servers -- --env-file "$env_file" "$@" \
            </dev/null >"$log" 2>&1 &
    fi
    CM_SERVERS_PID=$!
    local tries=0
    while [[ ! -f $env_file ]]; do
        if ! kill -0 "$CM_SERVERS_PID" 2>/dev/null; then
            wait "$CM_SERVERS_PID" 2>/dev/null || true
            CM_SERVERS_PID=
            cat "$log" >&2
            cm_die "cm-test-servers exited before it was ready"
        fi
        if ((tries >= 1200)); then
            cat "$log" >&2
            cm_stop_test_servers
            cm_die "cm-test-servers was not ready after 120 s"
        fi
        sleep 0.1
        tries=$((tries + 1))
    done
    # shellcheck source=/dev/null
    source "$env_file"
    export CM_TEST_PG_URL CM_TEST_MEMCACHED
    if [[ -n ${CM_TEST_MEMCACHED_RESULTS:-} ]]; then
        export CM_TEST_MEMCACHED_RESULTS
    fi
    if [[ -n ${CM_TEST_MEMCACHED_EXTRA:-} ]]; then
        export CM_TEST_MEMCACHED_EXTRA
    fi
}

# Stops the servers (SIGTERM, then waits for them to be torn down). Idempotent.
cm_stop_test_servers() {
    if [[ -z ${CM_SERVERS_PID:-} ]]; then
        return 0
    fi
    kill -TERM "$CM_SERVERS_PID" 2>/dev/null || true
    wait "$CM_SERVERS_PID" 2>/dev/null || true
    CM_SERVERS_PID=
}
