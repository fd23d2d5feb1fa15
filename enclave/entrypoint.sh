#!/bin/sh
# Entrypoint of the oyster-executor enclave image (Dockerfile.nitro), run as root (PID 1).
#
# 1. mounts cgroup v2 unless one is mounted already;
# 2. creates the workerd_N slices (cgroup_setup.sh);
# 3. brings up the loopback interface (workerd listens on 127.0.0.1);
# 4. creates the enclave key on first boot (oyster-executor keygen);
# 5. replaces itself with the daemon: oyster-executor serve --vsock-addr ...
#
# Settings (environment; defaults suit the image):
#   OYSTER_VSOCK_ADDR   CID:PORT the admin API listens on        (default 88:6000)
#   OYSTER_CONFIG_FILE  operator JSON config                      (default /app/oyster_serverless_executor_config.json)
#   OYSTER_CGROUP_ROOT  where to mount cgroup v2 if none is       (default /sys/fs/cgroup)
#   OYSTER_CGROUP_COUNT number of slices                          (default 20, cgroup_setup.sh)
#   OYSTER_LOG_FORMAT   text or json                              (default json)
#   OYSTER_METRICS_ADDR HOST:PORT for Prometheus metrics          (default: off)
#   OYSTER_ENTRYPOINT_DRY_RUN=1  print each command instead of running it (tests)
# Config keys can also be overridden with OYSTER_EXECUTOR_<KEY> variables (docs/operator.md).
set -eu

APP=/app
VSOCK_ADDR="${OYSTER_VSOCK_ADDR:-88:6000}"
CONFIG_FILE="${OYSTER_CONFIG_FILE:-$APP/oyster_serverless_executor_config.json}"
CGROUP_ROOT="${OYSTER_CGROUP_ROOT:-/sys/fs/cgroup}"
LOG_FORMAT="${OYSTER_LOG_FORMAT:-json}"
METRICS_ADDR="${OYSTER_METRICS_ADDR:-}"
KEY_FILE="${OYSTER_EXECUTOR_ENCLAVE_SIGNER_FILE:-$APP/id.sec}"
DRY_RUN="${OYSTER_ENTRYPOINT_DRY_RUN:-}"

say() { echo "entrypoint: $*" >&2; }

run() {
    if [ -n "$DRY_RUN" ]; then
        echo "$*"
    else
        "$@"
    fi
}

# 1. cgroup v2
if [ -n "$DRY_RUN" ] || ! grep -q ' - cgroup2 ' /proc/self/mountinfo; then
    run mkdir -p "$CGROUP_ROOT"
    run mount -t cgroup2 none "$CGROUP_ROOT"
fi

# 2. the slices (memory.max 100M, cpu.max "50000 1000000" each; see cgroup_setup.sh --help)
run "$APP/cgroup_setup.sh"

# 3. loopback, with `ip` if the image has it, else with one ioctl from Python
if command -v ip >/dev/null 2>&1; then
    run ip link set lo up
else
    run python3 "$APP/enclave/loopback_up.py"
fi

# 4. the enclave key, created once inside the enclave and never leaving it
if [ -n "$DRY_RUN" ] || [ ! -f "$KEY_FILE" ]; then
    run oyster-executor keygen --secret "$KEY_FILE" --public "$KEY_FILE.pub"
fi

# 5. the daemon
say "starting oyster-executor on vsock $VSOCK_ADDR"
if [ -n "$METRICS_ADDR" ]; then
    set -- --metrics-addr "$METRICS_ADDR" "$@"
fi
if [ -n "$DRY_RUN" ]; then
    echo oyster-executor --log-format "$LOG_FORMAT" serve --vsock-addr "$VSOCK_ADDR" \
        --config-file "$CONFIG_FILE" "$@"
    exit 0
fi
exec oyster-executor --log-format "$LOG_FORMAT" serve --vsock-addr "$VSOCK_ADDR" \
    --config-file "$CONFIG_FILE" "$@"
