#!/bin/sh
# Entrypoint of the oyster-executor enclave image (Dockerfile.nitro), run as root (PID 1).
#
# 0. checks the enclave's devices (/dev/nsm, /dev/vsock) and stops naming any that is missing;
# 1. mounts cgroup v2 unless one is mounted already, and creates the workerd_N slices;
# 2. networking as in Oyster's enclaves: loopback up, a default route through it, and an iptables
#    DNAT of every outbound TCP connection to the transparent proxy on 127.0.0.1:1200 (in this
#    network namespace only: the enclave's), and /etc/resolv.conf naming the resolver on 127.0.0.1;
# 3. creates the enclave key on first boot (oyster-executor keygen);
# 4. replaces itself with the supervisor (python3 -m oyster_enclave.supervise), which starts and
#    restarts the proxies, the DNS resolver, the attestation server and the executor.
#
# Settings (environment; defaults suit the image):
#   OYSTER_VSOCK_ADDR   CID:PORT the admin API listens on        (default 88:6000)
#   OYSTER_CONFIG_FILE  operator JSON config                      (default /app/oyster_serverless_executor_config.json)
#   OYSTER_CGROUP_ROOT  where to mount cgroup v2 if none is       (default /sys/fs/cgroup)
#   OYSTER_CGROUP_COUNT number of slices                          (default 20, cgroup_setup.sh)
#   OYSTER_CGROUP_PARENT group holding the slices, relative to the mount (default: the mount root)
#   OYSTER_LOG_FORMAT   text or json                              (default json)
#   OYSTER_METRICS_ADDR HOST:PORT for Prometheus metrics, also exposed on vsock 88:PORT (default: off)
#   OYSTER_OUTBOUND_VSOCK CID:PORT of the host's transparent proxy (default 3:1200)
#   OYSTER_DOH_URL      DNS-over-HTTPS server                     (default https://1.1.1.1/dns-query)
#   OYSTER_ENTRYPOINT_DRY_RUN=1  print each command instead of running it (tests)
# Test settings (never in production): OYSTER_VSOCK_STANDIN=unix:DIR, OYSTER_NSM_OPTIONAL=1
# (python3 -m oyster_enclave.supervise --help). Arguments are passed on to `oyster-executor serve`.
# Config keys can also be overridden with OYSTER_EXECUTOR_<KEY> variables (docs/operator.md).
set -eu

APP=/app
CGROUP_ROOT="${OYSTER_CGROUP_ROOT:-/sys/fs/cgroup}"
KEY_FILE="${OYSTER_EXECUTOR_ENCLAVE_SIGNER_FILE:-$APP/id.sec}"
DRY_RUN="${OYSTER_ENTRYPOINT_DRY_RUN:-}"
DNAT="OUTPUT -t nat -p tcp --dport 1:65535 ! -d 127.0.0.1 -j DNAT --to-destination 127.0.0.1:1200"

say() { echo "entrypoint: $*" >&2; }

run() {
    if [ -n "$DRY_RUN" ]; then
        echo "$*"
    else
        "$@"
    fi
}

# 0. the devices
if [ -z "$DRY_RUN" ]; then
    python3 -m oyster_enclave.supervise --check
fi

# 1. cgroup v2 and the slices (memory.max 100M, cpu.max "50000 1000000" each; cgroup_setup.sh --help)
if [ -n "$DRY_RUN" ] || ! grep -q " $CGROUP_ROOT [^-]* - cgroup2 " /proc/self/mountinfo; then
    run mkdir -p "$CGROUP_ROOT"
    run mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$CGROUP_ROOT"
fi
export OYSTER_CGROUP_MOUNT="$CGROUP_ROOT"  # cgroup_setup.sh: this mount, not another one
run "$APP/cgroup_setup.sh"

# 2. networking: every outbound TCP connection goes to the transparent proxy
run ip link set lo up
run ip route replace default dev lo src 127.0.0.1
# shellcheck disable=SC2086 # $DNAT is a list of words
if [ -n "$DRY_RUN" ] || ! iptables -C $DNAT 2>/dev/null; then
    run iptables -A $DNAT
fi
if [ -n "$DRY_RUN" ]; then
    echo "echo nameserver 127.0.0.1 > /etc/resolv.conf"
else
    echo "nameserver 127.0.0.1" > /etc/resolv.conf
fi

# 3. the enclave key, created once inside the enclave and never leaving it
if [ -n "$DRY_RUN" ] || [ ! -f "$KEY_FILE" ]; then
    run oyster-executor keygen --secret "$KEY_FILE" --public "$KEY_FILE.pub"
fi

# 4. the supervisor and its processes
if [ -n "$DRY_RUN" ]; then
    exec python3 -m oyster_enclave.supervise --print-plan -- "$@"
fi
say "starting the supervisor"
exec python3 -m oyster_enclave.supervise -- "$@"
