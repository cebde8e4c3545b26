# shellcheck shell=bash
# Small helpers for the project's scripts. Source it; it defines functions only.

# Prints a section header, the only chatter the scripts are meant to make.
cm_section() {
    printf '==> %s\n' "$*"
}

# Prints an error to stderr and exits 1.
cm_die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# Runs a command quietly: its output goes to a log and is shown only if it fails.
#   cm_quietly LOGFILE CMD [ARGS...]
cm_quietly() {
    local log=$1
    shift
    if ! "$@" >"$log" 2>&1; then
        cat "$log" >&2
        return 1
    fi
}
