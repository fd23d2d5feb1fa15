#!/usr/bin/env bash
# Creates (or, with --remove, tears down) the cgroup v2 slices workerd_1..N that confine the executor's
# workerd processes (one job per slice). Run as root. Idempotent.
set -euo pipefail

PROG=$(basename "$0")

usage() {
    cat <<EOF
Usage: $PROG [--parent NAME] [--count N] [--first K] [--memory-max SIZE] [--cpu-max "QUOTA PERIOD"] [--remove]

Creates the cgroup v2 slices workerd_1..N used by oyster-executor, under the cgroup2 mount found in
/proc/self/mountinfo (or under NAME inside it), enables the memory and cpu controllers for them where
the kernel offers them, and writes memory.max and cpu.max on every slice. Safe to run again.

Options (each also settable by the environment variable shown):
  --parent NAME        parent group, relative to the cgroup2 mount; created if missing
                       (OYSTER_CGROUP_PARENT, default: the mount root itself)
  --count N            number of slices (OYSTER_CGROUP_COUNT, default 20)
  --first K            number of the first slice: workerd_K..workerd_K+N-1
                       (OYSTER_CGROUP_FIRST, default 1)
  --memory-max SIZE    memory.max of each slice (OYSTER_CGROUP_MEMORY_MAX, default 100M)
  --cpu-max "Q P"      cpu.max of each slice (OYSTER_CGROUP_CPU_MAX, default "50000 1000000")
  --remove             kill every process in the workerd_* slices, remove them, then remove the
                       parent group if it is not the mount root and is left empty
  -h, --help           show this help
Environment: OYSTER_CGROUP_MOUNT overrides the detected cgroup2 mount point.

Where the memory or cpu controller is unavailable, one line says so and the slices are created
without that limit. Exit status: 0 on success, 1 on failure, 2 on bad usage.
EOF
}

die() { echo "$PROG: error: $*" >&2; exit 1; }
usage_error() { echo "$PROG: $*" >&2; echo "Try '$PROG --help'." >&2; exit 2; }

PARENT=${OYSTER_CGROUP_PARENT:-}
COUNT=${OYSTER_CGROUP_COUNT:-20}
FIRST=${OYSTER_CGROUP_FIRST:-1}
MEMORY_MAX=${OYSTER_CGROUP_MEMORY_MAX:-100M}
CPU_MAX=${OYSTER_CGROUP_CPU_MAX:-50000 1000000}
REMOVE=0

while [ $# -gt 0 ]; do
    case "$1" in
        --parent) [ $# -ge 2 ] || usage_error "--parent needs a value"; PARENT=$2; shift 2 ;;
        --parent=*) PARENT=${1#*=}; shift ;;
        --count) [ $# -ge 2 ] || usage_error "--count needs a value"; COUNT=$2; shift 2 ;;
        --count=*) COUNT=${1#*=}; shift ;;
        --first) [ $# -ge 2 ] || usage_error "--first needs a value"; FIRST=$2; shift 2 ;;
        --first=*) FIRST=${1#*=}; shift ;;
        --memory-max) [ $# -ge 2 ] || usage_error "--memory-max needs a value"; MEMORY_MAX=$2; shift 2 ;;
        --memory-max=*) MEMORY_MAX=${1#*=}; shift ;;
        --cpu-max) [ $# -ge 2 ] || usage_error "--cpu-max needs a value"; CPU_MAX=$2; shift 2 ;;
        --cpu-max=*) CPU_MAX=${1#*=}; shift ;;
        --remove) REMOVE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage_error "unknown argument: $1" ;;
    esac
done

[[ "$COUNT" =~ ^[1-9][0-9]*$ ]] || usage_error "--count must be a positive integer, got '$COUNT'"
[[ "$FIRST" =~ ^[1-9][0-9]*$ ]] || usage_error "--first must be a positive integer, got '$FIRST'"
LAST=$((FIRST + COUNT - 1))
PARENT=${PARENT#/}
PARENT=${PARENT%/}
case "/$PARENT/" in
    */../*|*/./*) usage_error "--parent must be a plain relative path, got '$PARENT'" ;;
esac

[ "$(id -u)" -eq 0 ] || die "must be run as root (cgroup groups can only be created by root)"

find_mount() {
    if [ -n "${OYSTER_CGROUP_MOUNT:-}" ]; then
        echo "$OYSTER_CGROUP_MOUNT"
        return
    fi
    # mountinfo: fields before " - " hold the mount point (5th); the first field after it is fstype.
    awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup2") { print $5; exit } break } }' \
        /proc/self/mountinfo | sed 's/\\040/ /g'
}

MOUNT=$(find_mount)
[ -n "$MOUNT" ] || die "no cgroup v2 (cgroup2) filesystem is mounted; mount one, e.g. mount -t cgroup2 none /sys/fs/cgroup"
[ -f "$MOUNT/cgroup.controllers" ] || die "$MOUNT is not a cgroup v2 mount (no cgroup.controllers)"
PARENT_DIR=$MOUNT${PARENT:+/$PARENT}

kill_slice() {  # kill every process in one group and wait (bounded) until it is empty
    local dir=$1 tries
    if [ -e "$dir/cgroup.kill" ]; then
        echo 1 >"$dir/cgroup.kill"
    fi
    for tries in $(seq 1 200); do
        [ -z "$(cat "$dir/cgroup.procs")" ] && return 0
        [ -e "$dir/cgroup.kill" ] || xargs -r kill -KILL <"$dir/cgroup.procs" 2>/dev/null || true
        sleep 0.01
    done
    return 1
}

remove_slices() {
    if [ ! -d "$PARENT_DIR" ]; then
        echo "$PROG: nothing to remove: $PARENT_DIR does not exist"
        return 0
    fi
    local dir removed=0
    for dir in "$PARENT_DIR"/workerd_*; do
        [ -d "$dir" ] || continue
        [[ "$(basename "$dir")" =~ ^workerd_[0-9]+$ ]] || continue
        kill_slice "$dir" || die "processes in $dir survived SIGKILL; cannot remove it"
        rmdir "$dir" || die "cannot remove $dir"
        removed=$((removed + 1))
    done
    echo "$PROG: removed $removed slices from $PARENT_DIR"
    if [ -n "$PARENT" ]; then
        if [ -z "$(find "$PARENT_DIR" -mindepth 1 -maxdepth 1 -type d -print -quit)" ] &&
            [ -z "$(cat "$PARENT_DIR/cgroup.procs")" ]; then
            rmdir "$PARENT_DIR" && echo "$PROG: removed empty parent group $PARENT_DIR"
        else
            echo "$PROG: kept parent group $PARENT_DIR (it still holds other groups or processes)"
        fi
    fi
}

# Enables each wanted controller on the path from the mount root down to the parent, so the slices get
# it; prints the controllers that ended up available to the slices.
enable_controllers() {
    local dir=$MOUNT rel part ctl
    local -a parts=()
    [ -n "$PARENT" ] && IFS=/ read -r -a parts <<<"$PARENT"
    for part in "" "${parts[@]}"; do
        [ -n "$part" ] && dir=$dir/$part
        for ctl in memory cpu; do
            if grep -qw "$ctl" "$dir/cgroup.controllers" &&
                ! grep -qw "$ctl" "$dir/cgroup.subtree_control"; then
                echo "+$ctl" >"$dir/cgroup.subtree_control" 2>/dev/null ||
                    echo "$PROG: note: could not enable $ctl in $dir/cgroup.subtree_control" >&2
            fi
        done
    done
    rel=""
    for ctl in memory cpu; do
        grep -qw "$ctl" "$PARENT_DIR/cgroup.subtree_control" && rel="$rel $ctl"
    done
    echo "${rel# }"
}

create_slices() {
    mkdir -p "$PARENT_DIR"
    local enabled missing="" ctl i dir
    enabled=$(enable_controllers)
    for ctl in memory cpu; do
        [[ " $enabled " == *" $ctl "* ]] || missing="$missing $ctl"
    done
    missing=${missing# }
    if [ -n "$missing" ]; then
        echo "$PROG: WARNING: controller(s) ${missing// /, } unavailable in $PARENT_DIR" \
            "(cgroup.controllers: '$(cat "$PARENT_DIR/cgroup.controllers")'):" \
            "slices created WITHOUT ${missing// /\/} limits, they are NOT enforced" >&2
    fi
    for i in $(seq "$FIRST" "$LAST"); do
        dir=$PARENT_DIR/workerd_$i
        mkdir -p "$dir"
        if [[ " $enabled " == *" memory "* ]]; then
            echo "$MEMORY_MAX" >"$dir/memory.max" || die "cannot write memory.max=$MEMORY_MAX in $dir"
        fi
        if [[ " $enabled " == *" cpu "* ]]; then
            echo "$CPU_MAX" >"$dir/cpu.max" || die "cannot write cpu.max=$CPU_MAX in $dir"
        fi
    done
    for dir in "$PARENT_DIR"/workerd_*; do
        i=${dir##*/workerd_}
        if [[ "$i" =~ ^[0-9]+$ ]] && { [ "$i" -gt "$LAST" ] || [ "$i" -lt "$FIRST" ]; }; then
            echo "$PROG: note: $dir is outside workerd_$FIRST..workerd_$LAST and was left alone;" \
                "the executor will use it (use --remove, then run again, to drop it)" >&2
        fi
    done
    echo "$PROG: $COUNT slices workerd_$FIRST..workerd_$LAST ready in $PARENT_DIR" \
        "(memory.max: $([[ " $enabled " == *" memory "* ]] && echo "$MEMORY_MAX" || echo "not enforced");" \
        "cpu.max: $([[ " $enabled " == *" cpu "* ]] && echo "$CPU_MAX" || echo "not enforced"))"
}

if [ "$REMOVE" -eq 1 ]; then
    remove_slices
else
    create_slices
fi
