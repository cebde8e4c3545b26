# shellcheck shell=bash
# Checks the Dockerfile's build stage without Docker, which scripts/test
# cannot count on (no daemon on a CI runner or in a container). The image
# once could not be built: its `cargo build` built only the example and
# the runtime stage COPYed a binary nothing had built, and no test noticed.
# So the check reads the cargo command(s) and the copied paths from the
# Dockerfile itself, never from a copy kept here, and cannot drift from it.
# Source scripts/lib/common.sh first.

# Prints the Dockerfile's instructions one a line: comment and blank lines
# dropped, backslash-continued lines joined (as Docker reads them). Like
# Docker, the functions below take instruction names in any case.
#   cm_dockerfile_instructions DOCKERFILE
cm_dockerfile_instructions() {
    awk '
        /^[[:space:]]*#/ { next }
        {
            line = $0
            sub(/[[:space:]]+$/, "", line)
            if (line ~ /\\$/) {
                sub(/\\$/, "", line)
                joined = joined line " "
                next
            }
            joined = joined line
            if (joined ~ /[^[:space:]]/) print joined
            joined = ""
        }
        END { if (joined ~ /[^[:space:]]/) print joined }
    ' "$1"
}

# Prints the command of each `RUN cargo build ...` instruction (RUN's own
# --flags, such as --mount, left out), one a line.
#   cm_dockerfile_cargo_builds DOCKERFILE
cm_dockerfile_cargo_builds() {
    cm_dockerfile_instructions "$1" |
        sed -n -E 's/^RUN([[:space:]]+--[^[:space:]]+)*[[:space:]]+(cargo[[:space:]]+build([[:space:]].*)?)$/\2/Ip'
}

# Prints the source paths of each `COPY --from=STAGE SRC... DEST`, one a line.
#   cm_dockerfile_stage_copies DOCKERFILE
cm_dockerfile_stage_copies() {
    cm_dockerfile_instructions "$1" | awk '
        toupper($1) == "COPY" {
            from = 0
            n = 0
            for (i = 2; i <= NF; i++) {
                if ($i ~ /^--from=/) from = 1
                else if ($i !~ /^--/) args[++n] = $i
            }
            if (from) for (i = 1; i < n; i++) print args[i]
        }
    '
}

# Prints the first WORKDIR: the build stage's, where `COPY . .` puts the repo.
#   cm_dockerfile_workdir DOCKERFILE
cm_dockerfile_workdir() {
    cm_dockerfile_instructions "$1" | awk 'toupper($1) == "WORKDIR" { print $2; exit }'
}

# Runs the Dockerfile's `RUN cargo build` command(s) word for word in the
# current directory (the repo root), then checks that every `COPY --from=...`
# source exists, with the build stage's WORKDIR mapped to the repo root and
# WORKDIR/target to the target directory used here. Copied outputs are deleted first, so a stale
# binary from an earlier run cannot stand in for one the command no longer
# builds (cargo puts them back when it builds them, even when fresh).
#
# This checks what gets built and copied, not the optimised code: a cold
# `--release` build takes minutes on CI's two cores, so the release profile
# is made cheap through the environment (the command itself is unchanged),
# in a target directory of its own so that later runs are incremental.
#   cm_check_dockerfile_build [DOCKERFILE]
cm_check_dockerfile_build() {
    local dockerfile=${1:-Dockerfile}
    local target_dir=${CM_DOCKER_CHECK_TARGET_DIR:-target/docker-check}
    local workdir commands sources cmd src path words log
    workdir=$(cm_dockerfile_workdir "$dockerfile")
    commands=$(cm_dockerfile_cargo_builds "$dockerfile")
    sources=$(cm_dockerfile_stage_copies "$dockerfile")
    if [[ -z $workdir || -z $commands || -z $sources ]]; then
        printf '%s: expected a WORKDIR, a `RUN cargo build` and a `COPY --from=`\n' \
            "$dockerfile" >&2
        return 1
    fi

    local srcs=() paths=()
    while IFS= read -r src; do
        case $src in
        "$workdir"/target/*) path=$target_dir/${src#"$workdir"/target/} ;;
        "$workdir"/*) path=${src#"$workdir"/} ;;
        *)
            printf '%s: COPY --from source %s is not under WORKDIR %s\n' \
                "$dockerfile" "$src" "$workdir" >&2
            return 1
            ;;
        esac
        srcs+=("$src")
        paths+=("$path")
        if [[ $path == "$target_dir"/* && -f $path ]]; then
            rm -f -- "$path"
        fi
    done <<<"$sources"

    log=$(mktemp -t cm-docker-build.XXXXXX)
    while IFS= read -r cmd; do
        # Run as plain words, not through a shell: anything a shell would
        # interpret means the command is no longer one this check can run.
        if [[ $cmd == *[\;\&\|\<\>\$\`\(\)\"\'\\]* ]]; then
            printf '%s: cannot run `%s` without a shell; extend %s\n' \
                "$dockerfile" "$cmd" "${BASH_SOURCE[0]}" >&2
            rm -f "$log"
            return 1
        fi
        read -ra words <<<"$cmd"
        printf '%s\n' "${words[*]}"
        if ! cm_quietly "$log" env \
            CARGO_TARGET_DIR="$target_dir" \
            CARGO_PROFILE_RELEASE_OPT_LEVEL=0 \
            CARGO_PROFILE_RELEASE_DEBUG=false \
            CARGO_PROFILE_RELEASE_LTO=false \
            CARGO_PROFILE_RELEASE_CODEGEN_UNITS=256 \
            CARGO_PROFILE_RELEASE_INCREMENTAL=true \
            "${words[@]}"; then
            rm -f "$log"
            return 1
        fi
    done <<<"$commands"
    rm -f "$log"

    local i missing=0
    for i in "${!paths[@]}"; do
        if [[ ! -e ${paths[i]} ]]; then
            printf '%s: COPY --from source %s was not built (no %s)\n' \
                "$dockerfile" "${srcs[i]}" "${paths[i]}" >&2
            missing=1
        fi
    done
    return "$missing"
}
