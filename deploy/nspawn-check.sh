#!/bin/sh
# Installs BitSecure under a real systemd and checks the service end to end, for machines whose
# PID 1 is not systemd (CI, containers): first the dist tarball with its install.sh, then the
# Debian package with dpkg. systemd-nspawn boots a throw-away root made of this machine's /usr
# (read-only with a tmpfs /usr/local for the tarball; a volatile overlay for the package), a copy
# of its /etc (and of the dpkg database), a private network and a private bpffs at /sys/fs/bpf.
# Inside, it checks: install, the service's user, readiness (Type=notify), no-new-privileges,
# seccomp, per-thread capabilities, which part of /sys/fs/bpf is writable, the pins, /metrics;
# then an upgrade (config kept, pins picked up, a baseline learned and written), reload,
# uninstall (pins removed) and purge. ~30 s.
#
#   cargo xtask dist && sudo deploy/nspawn-check.sh [TARBALL [DEB]]   (default: newest in target/dist)
#
# Needs root, systemd installed (not necessarily running) and systemd-nspawn (Debian package
# systemd-container). `cargo xtask test` runs it after the tests. Developer tool: not part of
# the tarball.
set -eu

die() {
    echo "nspawn-check: $*" >&2
    exit 1
}
HERE=$(cd "$(dirname "$0")" && pwd)
[ "$(id -u)" -eq 0 ] || die "run as root"
command -v systemd-nspawn >/dev/null || die "systemd-nspawn not found: apt-get install systemd-container"
# shellcheck disable=SC2012 # names are ours: bitsecure-<version>-<arch>-linux-gnu.tar.gz
TARBALL=${1:-$(ls -t "$HERE"/../target/dist/bitsecure-*.tar.gz 2>/dev/null | head -1)}
# shellcheck disable=SC2012 # bitsecure_<version>_<arch>.deb
DEB=${2:-$(ls -t "$HERE"/../target/dist/bitsecure_*.deb 2>/dev/null | head -1)}
[ -f "${TARBALL:-}" ] || die "no tarball given and none in target/dist: run cargo xtask dist"
[ -f "${DEB:-}" ] || die "no .deb given and none in target/dist: run cargo xtask dist"

W=$(mktemp -d /tmp/bitsecure-nspawn-XXXXXX)
cleanup() {
    umount "$W/bpffs" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
trap "exit 1" HUP INT PIPE TERM
chmod 755 "$W"
mkdir -p "$W/dist" "$W/bpffs"
tar -xzf "$TARBALL" -C "$W/dist" --strip-components=1
cp "$DEB" "$W/dist/bitsecure.deb"
mount -t bpf bpf "$W/bpffs"
chmod 700 "$W/bpffs"

# A container root in $1: /usr comes from this machine (bound at boot); the copies of os-release
# and libsystemd-shared let nspawn see what it will boot (cgroup layout). A check.target runs
# /results/check.sh once booted, then powers off.
make_root() {
    R=$1
    mkdir -p "$R/usr/lib" "$R/var/lib" "$R/tmp" "$R/root" "$R/home"
    for dir in bin lib lib64 sbin; do
        if [ -L "/$dir" ]; then ln -s "$(readlink "/$dir")" "$R/$dir"; fi
    done
    cp /usr/lib/os-release "$R/usr/lib/os-release"
    for shared in /usr/lib/systemd/libsystemd-shared-*.so /usr/lib/*/systemd/libsystemd-shared-*.so; do
        if [ -f "$shared" ]; then
            mkdir -p "$R$(dirname "$shared")"
            : >"$R$shared"
        fi
    done
    cp -a /etc "$R/etc"
    rm -f "$R/etc/machine-id"
    cat >"$R/etc/systemd/system/check.target" <<'EOF'
[Unit]
Description=bitsecure nspawn check
Requires=basic.target
After=basic.target
Wants=check.service
EOF
    cat >"$R/etc/systemd/system/check.service" <<'EOF'
[Unit]
After=basic.target
[Service]
Type=oneshot
ExecStart=/bin/sh -c '/results/check.sh >/results/log 2>&1'
ExecStopPost=/bin/systemctl poweroff --no-block
EOF
}

# The helpers every check script starts with.
HELPERS='#!/bin/sh
set -x
out=/results/report
ok() { echo "ok: $*" >>$out; }
fail() { echo "FAIL: $*" >>$out; }
check() { what=$1; shift; if "$@" >/dev/null 2>&1; then ok "$what"; else fail "$what"; fi; }
pid() { systemctl show -p MainPID --value bitsecure; }
# What the running service must look like (a user of its own, hardened, pins, metrics).
check_service() {
    P=$(pid)
    check "$1: service active" systemctl is-active bitsecure
    check "$1: service enabled" systemctl is-enabled bitsecure
    check "$1: ready after its first poll (Type=notify)" sh -c "systemctl show -p StatusText --value bitsecure | grep -qx counting"
    check "$1: runs as user bitsecure" test "$(stat -c %U /proc/$P)" = bitsecure
    check "$1: NoNewPrivs" grep -qx "NoNewPrivs:.1" /proc/$P/status
    check "$1: seccomp filter" grep -qx "Seccomp:.2" /proc/$P/status
    check "$1: main thread holds no capability" grep -qx "CapEff:.0000000000000000" /proc/$P/task/$P/status
    for task in /proc/$P/task/*; do echo "thread $(cat $task/comm): $(grep CapEff $task/status)" >>$out; done
    check "$1: /sys/fs/bpf read-only for it" grep -q " /sys/fs/bpf ro," /proc/$P/mountinfo
    check "$1: /sys/fs/bpf/bitsecure writable for it" grep -q " /sys/fs/bpf/bitsecure rw," /proc/$P/mountinfo
    check "$1: pins owned by bitsecure" sh -c "[ -n \"\$(ls /sys/fs/bpf/bitsecure)\" ] && ! find /sys/fs/bpf/bitsecure ! -user bitsecure | grep -q ."
    check "$1: /metrics answers" sh -c "curl -sf http://127.0.0.1:9977/metrics | grep -q ^bitsecure_build_info"
}
'

# Boots root $1 with check script $2 (after the helpers) and extra nspawn options; prints the
# report; returns 1 if a check failed.
boot() {
    root=$1
    results=$root.results
    mkdir -p "$results"
    { printf '%s' "$HELPERS"; cat "$2"; } >"$results/check.sh"
    chmod 755 "$results/check.sh"
    shift 2
    timeout 180 systemd-nspawn --directory="$root" --private-network --register=no --keep-unit \
        --machine=bitsecure-check --capability=all --system-call-filter=bpf \
        --bind-ro="$W/dist:/dist" --bind="$results:/results" --bind="$W/bpffs:/sys/fs/bpf" \
        "$@" --boot -- systemd.unit=check.target systemd.firstboot=off >"$results/nspawn.log" 2>&1 || true
    if [ ! -s "$results/report" ]; then
        tail -30 "$results/nspawn.log" >&2
        die "the container produced no report"
    fi
    cat "$results/report"
    if grep -q '^FAIL' "$results/report"; then
        for file in install.out log journal; do
            echo "--- $file:"
            cat "$results/$file" 2>/dev/null || true
        done
        return 1
    fi
}

cat >"$W/tarball.sh" <<'EOF'
check "install.sh installs" sh -c '/dist/install.sh >/results/install.out 2>&1'
check "host checked before the first start" grep -q "^all checks passed" /results/install.out
check_service install.sh
P=$(pid)

# Upgrade with an edited config: kept, checked, the agent restarted and its pins picked up.
sed -i 's/^learn_seconds = .*/learn_seconds = 2.0/' /etc/bitsecure/bitsecure.toml
check "install.sh upgrades" /dist/install.sh
check "config kept" grep -q "^learn_seconds = 2.0" /etc/bitsecure/bitsecure.toml
sleep 5
check "restarted" test "$(pid)" != "$P"
check "baseline learned, written 0600 by bitsecure" test "$(stat -c %U:%a /var/lib/bitsecure/baseline.toml)" = bitsecure:600
systemctl reload bitsecure
sleep 1
check "reload keeps it running" systemctl is-active bitsecure
check "SIGHUP reached the agent" sh -c 'journalctl -u bitsecure | grep -q "SIGHUP: reloading"'
journalctl -u bitsecure --no-pager >/results/journal

check "install.sh --uninstall" /dist/install.sh --uninstall
check "service gone" sh -c '! systemctl is-active bitsecure && [ ! -e /etc/systemd/system/bitsecure.service ]'
check "pins removed" test ! -e /sys/fs/bpf/bitsecure
check "config and baseline kept" test -f /etc/bitsecure/bitsecure.toml -a -f /var/lib/bitsecure/baseline.toml
check "install.sh --uninstall --purge" /dist/install.sh --uninstall --purge
check "purged" sh -c '[ ! -e /etc/bitsecure ] && [ ! -e /var/lib/bitsecure ] && ! getent passwd bitsecure'
EOF

cat >"$W/deb.sh" <<'EOF'
check "dpkg -i installs" sh -c 'dpkg -i /dist/bitsecure.deb >/results/install.out 2>&1'
check "package installed" sh -c 'dpkg-query -W -f="\${Status}" bitsecure | grep -qx "install ok installed"'
check_service deb
P=$(pid)
check "man page" test -f /usr/share/man/man1/bitsecure-run.1.gz
check "bash completion" grep -q _bitsecure /usr/share/bash-completion/completions/bitsecure
check "runbook and rules shipped" test -f /usr/share/doc/bitsecure/runbook.md -a -f /usr/share/bitsecure/prometheus/bitsecure.rules.yml

# Upgrade (the same package again) with an edited conffile: kept, the agent restarted.
sed -i 's/^learn_seconds = .*/learn_seconds = 2.0/' /etc/bitsecure/bitsecure.toml
check "dpkg upgrades" sh -c 'dpkg -i /dist/bitsecure.deb >>/results/install.out 2>&1'
check "deb: config kept" grep -q "^learn_seconds = 2.0" /etc/bitsecure/bitsecure.toml
sleep 5
check "deb: restarted" test "$(pid)" != "$P"
check "deb: baseline learned" test "$(stat -c %U:%a /var/lib/bitsecure/baseline.toml)" = bitsecure:600
journalctl -u bitsecure --no-pager >/results/journal

check "dpkg -r removes" sh -c 'dpkg -r bitsecure >>/results/install.out 2>&1'
check "deb: service gone" sh -c '! systemctl is-active bitsecure && [ ! -e /usr/lib/systemd/system/bitsecure.service ]'
check "deb: pins removed" test ! -e /sys/fs/bpf/bitsecure
check "deb: config and baseline kept" test -f /etc/bitsecure/bitsecure.toml -a -f /var/lib/bitsecure/baseline.toml
check "dpkg -P purges" sh -c 'dpkg -P bitsecure >>/results/install.out 2>&1'
check "deb: purged" sh -c '[ ! -e /etc/bitsecure ] && [ ! -e /var/lib/bitsecure ] && ! getent passwd bitsecure'
EOF

failed=0
echo "nspawn-check: installing $(basename "$TARBALL") in a container"
make_root "$W/tarball"
boot "$W/tarball" "$W/tarball.sh" --bind-ro=/usr --tmpfs=/usr/local || failed=1

echo "nspawn-check: installing $(basename "$DEB") in a container"
make_root "$W/deb"
# dpkg writes /usr (a volatile overlay on this machine's) and its database (a copy).
cp -a /var/lib/dpkg "$W/deb/var/lib/dpkg"
boot "$W/deb" "$W/deb.sh" --overlay=/usr::/usr || failed=1

[ "$failed" = 0 ] || die "FAILED"
echo "nspawn-check: all checks passed"
