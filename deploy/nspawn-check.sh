#!/bin/sh
# Installs a dist tarball with its install.sh under a real systemd and checks the service end to
# end, for machines whose PID 1 is not systemd (CI, containers). systemd-nspawn boots a
# throw-away root made of this machine's /usr (read-only), a copy of its /etc, a tmpfs
# /usr/local, a private network and a private bpffs at /sys/fs/bpf. Inside, it checks: install,
# the service's user, no-new-privileges, seccomp, per-thread capabilities, which part of
# /sys/fs/bpf is writable, the pins, /metrics; then an upgrade (config kept, pins picked up, a
# baseline learned and written), reload, uninstall (pins removed) and purge. ~10 s.
#
#   cargo xtask dist && sudo deploy/nspawn-check.sh [TARBALL]   (default: newest in target/dist)
#
# Needs root, systemd installed (not necessarily running) and systemd-nspawn (Debian package
# systemd-container). Use it after changing the unit or install.sh, e.g. trimming capabilities.
# Developer tool: not part of the tarball.
set -eu

die() {
    echo "nspawn-check: $*" >&2
    exit 1
}
HERE=$(cd "$(dirname "$0")" && pwd)
[ "$(id -u)" -eq 0 ] || die "run as root"
command -v systemd-nspawn >/dev/null || die "systemd-nspawn not found: apt-get install systemd-container"
if [ $# -ge 1 ]; then
    TARBALL=$1
else
    # shellcheck disable=SC2012 # names are ours: bitsecure-<version>-<arch>-linux-gnu.tar.gz
    TARBALL=$(ls -t "$HERE"/../target/dist/bitsecure-*.tar.gz 2>/dev/null | head -1)
fi
[ -f "${TARBALL:-}" ] || die "no tarball given and none in target/dist: run cargo xtask dist"

W=$(mktemp -d /tmp/bitsecure-nspawn-XXXXXX)
cleanup() {
    umount "$W/bpffs" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
trap "exit 1" HUP INT PIPE TERM
chmod 755 "$W"
mkdir -p "$W/dist" "$W/results" "$W/bpffs" "$W/root"
tar -xzf "$TARBALL" -C "$W/dist" --strip-components=1
mount -t bpf bpf "$W/bpffs"
chmod 700 "$W/bpffs"

# The container's root: /usr comes from this machine (bound read-only at boot); the copies of
# os-release and libsystemd-shared let nspawn see what it will boot (cgroup layout).
R=$W/root
mkdir -p "$R/usr/lib" "$R/var" "$R/tmp" "$R/root" "$R/home"
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
cat >"$W/results/check.sh" <<'EOF'
#!/bin/sh
set -x
out=/results/report
ok() { echo "ok: $*" >>$out; }
fail() { echo "FAIL: $*" >>$out; }
check() { what=$1; shift; if "$@" >/dev/null 2>&1; then ok "$what"; else fail "$what"; fi; }
pid() { systemctl show -p MainPID --value bitsecure; }

check "install.sh installs" sh -c '/dist/install.sh >/results/install.out 2>&1'
check "host checked before the first start" grep -q "^all checks passed" /results/install.out
sleep 3
P=$(pid)
check "service active" systemctl is-active bitsecure
check "service enabled" systemctl is-enabled bitsecure
check "runs as user bitsecure" test "$(stat -c %U /proc/$P)" = bitsecure
check "NoNewPrivs" grep -qx "NoNewPrivs:.1" /proc/$P/status
check "seccomp filter" grep -qx "Seccomp:.2" /proc/$P/status
check "main thread holds no capability" grep -qx "CapEff:.0000000000000000" /proc/$P/task/$P/status
for task in /proc/$P/task/*; do echo "thread $(cat $task/comm): $(grep CapEff $task/status)" >>$out; done
check "/sys/fs/bpf read-only for it" grep -q " /sys/fs/bpf ro," /proc/$P/mountinfo
check "/sys/fs/bpf/bitsecure writable for it" grep -q " /sys/fs/bpf/bitsecure rw," /proc/$P/mountinfo
check "pins owned by bitsecure" sh -c '[ -n "$(ls /sys/fs/bpf/bitsecure)" ] && ! find /sys/fs/bpf/bitsecure ! -user bitsecure | grep -q .'
check "/metrics answers" sh -c 'curl -sf http://127.0.0.1:9977/metrics | grep -q ^bitsecure_build_info'

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
chmod 755 "$W/results/check.sh"

echo "nspawn-check: installing $(basename "$TARBALL") in a container"
timeout 180 systemd-nspawn --directory="$R" --private-network --register=no --keep-unit \
    --machine=bitsecure-check --capability=all --system-call-filter=bpf \
    --bind-ro=/usr --tmpfs=/usr/local --bind-ro="$W/dist:/dist" --bind="$W/results:/results" \
    --bind="$W/bpffs:/sys/fs/bpf" \
    --boot -- systemd.unit=check.target systemd.firstboot=off >"$W/nspawn.log" 2>&1 || true

if [ ! -s "$W/results/report" ]; then
    tail -30 "$W/nspawn.log" >&2
    die "the container produced no report"
fi
cat "$W/results/report"
if grep -q '^FAIL' "$W/results/report"; then
    echo "--- first install.sh:"
    cat "$W/results/install.out" 2>/dev/null || true
    echo "--- check log:"
    cat "$W/results/log"
    echo "--- journal of bitsecure.service:"
    cat "$W/results/journal" 2>/dev/null || true
    die "FAILED"
fi
echo "nspawn-check: all checks passed"
