#!/bin/sh
# Install, upgrade or remove BitSecure on Debian/Ubuntu, from the unpacked dist tarball
# (`cargo xtask dist`): run it as root from the tarball's directory, or by its path.
#
#   sudo ./install.sh                      install or upgrade, then start the service
#   sudo ./install.sh --uninstall          stop and remove; keep config and baseline
#   sudo ./install.sh --uninstall --purge  also remove config, baseline and the user
#   ./install.sh --root DIR [--uninstall]  stage into DIR (DESTDIR-style): files only, no
#                                          user, no systemctl, kernel state untouched
set -eu

NAME=bitsecure
USER_NAME=bitsecure

usage() {
    cat <<EOF
Usage: $0 [--root DIR] [--uninstall [--purge]]

Installs BitSecure from this directory (the unpacked dist tarball):
  /usr/local/bin/bitsecure                    the agent and CLI
  /etc/bitsecure/bitsecure.toml               the config (an existing one is never replaced)
  /etc/systemd/system/bitsecure.service       the hardened service, enabled and (re)started
  /var/lib/bitsecure/                         state: the baseline (0700, user $USER_NAME)
  /usr/local/share/doc/bitsecure/             README.md and INSTALL.md
and creates the system user $USER_NAME the service runs as. It validates the config
(bitsecure config), checks the host before a first start (bitsecure check), then enables and
(re)starts the service. An upgrade (run it again) keeps the config and the baseline.

Options:
  --root DIR    install under DIR instead of / (for packaging and tests): no user is created,
                systemctl is not run and kernel state is not touched; root is not required
  --uninstall   stop and disable the service, remove the agent's pinned kernel state
                (bitsecure uninstall), the binary, the unit and the docs; keep
                /etc/bitsecure and /var/lib/bitsecure
  --purge       with --uninstall: also remove /etc/bitsecure, /var/lib/bitsecure, unit
                drop-ins and the $USER_NAME user
  -h, --help    show this help
EOF
}

say() { printf '%s\n' "install.sh: $*"; }
warn() { printf '%s\n' "install.sh: warning: $*" >&2; }
die() {
    printf '%s\n' "install.sh: error: $*" >&2
    exit 1
}

ARGS="$*"
ROOT=""
ACTION=install
PURGE=no
while [ $# -gt 0 ]; do
    case "$1" in
    --root)
        [ $# -ge 2 ] || die "--root needs a directory"
        ROOT=$2
        shift 2
        ;;
    --root=*)
        ROOT=${1#--root=}
        shift
        ;;
    --uninstall)
        ACTION=uninstall
        shift
        ;;
    --purge)
        PURGE=yes
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        usage >&2
        die "unknown argument: $1"
        ;;
    esac
done
[ "$PURGE" = no ] || [ "$ACTION" = uninstall ] || die "--purge only goes with --uninstall"

if [ -n "$ROOT" ]; then
    [ -d "$ROOT" ] || die "--root $ROOT: no such directory"
    ROOT=$(cd "$ROOT" && pwd)
    [ "$ROOT" != / ] || ROOT=""
fi
# A real install changes the system: root only. Staging with --root needs no privileges.
if [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root: sudo $0${ARGS:+ $ARGS}"
fi

HERE=$(cd "$(dirname "$0")" && pwd)
BIN=$ROOT/usr/local/bin/$NAME
CONF_DIR=$ROOT/etc/$NAME
CONF=$CONF_DIR/$NAME.toml
UNIT_DIR=$ROOT/etc/systemd/system
UNIT=$UNIT_DIR/$NAME.service
STATE=$ROOT/var/lib/$NAME
DOC=$ROOT/usr/local/share/doc/$NAME

# systemctl only for a real install on a machine booted with systemd.
systemd_running() {
    [ -z "$ROOT" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

# Copies $1 to $2 with mode $3 through a temporary name and a rename, so a running binary is
# replaced atomically (no "text file busy", no half-written file).
put() {
    install -m "$3" "$1" "$2.new.$$"
    mv -f "$2.new.$$" "$2"
}

check_kernel() {
    release=$(uname -r)
    major=${release%%.*}
    rest=${release#*.}
    minor=${rest%%[!0-9]*}
    case "$major$minor" in
    *[!0-9]* | "") return ;;
    esac
    if [ "$major" -lt 5 ] || { [ "$major" -eq 5 ] && [ "$minor" -lt 10 ]; }; then
        warn "kernel $release is older than 5.10: the agent will refuse to start"
    fi
}

# validate BINARY ADVICE: `BINARY config --config $CONF`, or stop with its error and ADVICE.
validate() {
    if ! output=$("$1" config --config "$CONF" 2>&1); then
        printf '%s\n' "$output" >&2
        die "$CONF is not valid (see above): $2"
    fi
    say "config $CONF is valid"
}

do_install() {
    for file in bin/$NAME config/$NAME.toml systemd/$NAME.service; do
        [ -f "$HERE/$file" ] || die "$HERE/$file is missing: run this script from the unpacked dist tarball (cargo xtask dist)"
    done
    # Fails here, before anything is installed, on the wrong architecture or a too old glibc.
    if ! version=$("$HERE/bin/$NAME" --version 2>&1); then
        die "cannot run $HERE/bin/$NAME on this machine (wrong architecture, or glibc older than the one it was built against; see INSTALL.md): $version"
    fi
    say "installing $version into ${ROOT:-/}"
    # An upgrade keeps the existing config: check it with the new binary before changing
    # anything, so a config the new version refuses leaves the running agent alone.
    if [ -e "$CONF" ]; then
        validate "$HERE/bin/$NAME" "nothing was changed; fix it, then rerun $0"
    fi
    if [ -z "$ROOT" ]; then
        check_kernel
    fi

    if [ -z "$ROOT" ] && ! getent passwd "$USER_NAME" >/dev/null; then
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin --comment "BitSecure agent" "$USER_NAME" ||
            die "cannot create the system user $USER_NAME"
        say "created system user $USER_NAME"
    fi

    install -d -m 0755 "$ROOT/usr/local/bin" "$CONF_DIR" "$UNIT_DIR" "$DOC"
    install -d -m 0700 "$STATE"
    if [ -z "$ROOT" ]; then
        # systemd (StateDirectory=) would fix the owner at start; do it now for a clean state.
        chown "$USER_NAME:$USER_NAME" "$STATE"
    fi
    put "$HERE/bin/$NAME" "$BIN" 0755
    say "installed $BIN"
    if [ -e "$CONF" ]; then
        say "kept the existing $CONF (the shipped default: bitsecure config --default)"
    else
        put "$HERE/config/$NAME.toml" "$CONF" 0644
        say "installed the default config as $CONF"
    fi
    put "$HERE/systemd/$NAME.service" "$UNIT" 0644
    say "installed $UNIT (change it with a drop-in: systemctl edit $NAME)"
    for doc in README.md INSTALL.md; do
        if [ -f "$HERE/$doc" ]; then
            put "$HERE/$doc" "$DOC/$doc" 0644
        fi
    done

    validate "$BIN" "fix it, then run: systemctl restart $NAME"

    # Before a first start, ask the agent whether this host can run it (kernel, cgroup v2,
    # bpffs, listen port, ...): a problem shows now, with its fix, rather than as a service that
    # keeps failing. Not on an upgrade: the running agent holds the port and proves the rest.
    if [ -z "$ROOT" ] && ! { systemd_running && systemctl is-active --quiet "$NAME.service"; }; then
        if ! "$BIN" check --config "$CONF"; then
            if systemd_running; then
                die "the host is not ready (FAIL lines above): fix them, then rerun $0"
            fi
            warn "the host is not ready (FAIL lines above): fix them before starting the agent"
        fi
    fi

    if systemd_running; then
        systemctl daemon-reload
        systemctl enable "$NAME.service"
        # restart, not start: an upgrade must replace the running agent.
        systemctl restart "$NAME.service"
        say "service $NAME enabled and (re)started"
        say "check it: systemctl status $NAME; curl -s http://127.0.0.1:9977/metrics | head"
    elif [ -n "$ROOT" ]; then
        say "staged under $ROOT: no user created, systemctl not run"
    else
        say "systemd is not running here: the service was installed but not started."
        say "start the agent by hand: $BIN run --config $CONF"
        say "or, once booted with systemd: systemctl daemon-reload && systemctl enable --now $NAME"
    fi
}

do_uninstall() {
    if systemd_running; then
        if [ -f "$UNIT" ]; then
            systemctl disable --now "$NAME.service" || warn "could not stop/disable $NAME.service"
        fi
    elif [ -z "$ROOT" ]; then
        warn "systemd is not running: stop a running agent yourself before uninstalling"
    fi

    # Pinned maps and links in bpffs outlive the agent: remove them (the kernel then detaches the
    # programs). Never from a --root staging area: the pin path is a real kernel path.
    if [ -z "$ROOT" ] && [ -x "$BIN" ]; then
        if [ -f "$CONF" ]; then
            set -- --config "$CONF"
        else
            set --
        fi
        if "$BIN" uninstall "$@"; then
            say "removed the agent's kernel state"
        else
            warn "bitsecure uninstall failed: pinned kernel state may remain (kernel.pin_path, default /sys/fs/bpf/bitsecure); remove that directory to detach the programs"
        fi
    fi

    rm -f "$BIN" "$UNIT"
    rm -rf "$DOC"
    say "removed $BIN, $UNIT and $DOC"
    if [ "$PURGE" = yes ]; then
        rm -rf "$CONF_DIR" "$STATE" "$UNIT_DIR/$NAME.service.d"
        say "purged $CONF_DIR, $STATE and $UNIT_DIR/$NAME.service.d"
        if [ -z "$ROOT" ] && getent passwd "$USER_NAME" >/dev/null; then
            if userdel "$USER_NAME"; then
                say "removed the user $USER_NAME"
            else
                warn "could not remove the user $USER_NAME"
            fi
        fi
    else
        say "kept $CONF_DIR and $STATE (remove them too with --uninstall --purge)"
    fi
    if systemd_running; then
        systemctl daemon-reload
    fi
}

case "$ACTION" in
install) do_install ;;
uninstall) do_uninstall ;;
esac
