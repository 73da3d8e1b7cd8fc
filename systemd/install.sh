#!/usr/bin/env bash
# Install scanside on a Debian or Ubuntu box next to a scanner. Run as root from a
# checkout of scanside:
#
#   sudo systemd/install.sh                     # CPU box: ONNX Runtime
#   sudo systemd/install.sh --gpu               # GPU box: also tensorrt and pycuda
#   sudo systemd/install.sh --inbox /data/inbox # where the DICOM receiver writes
#
# It creates the `scanside` system user, a virtual environment under /opt/scanside,
# the inbox (group-writable, so the DICOM receiver can write into it), the config
# /etc/scanside/scanside.toml (kept if present), and the systemd units, then enables and
# starts them. DESTDIR=/some/root installs into that tree instead and leaves users and
# systemd alone (for packaging and for the tests).
set -euo pipefail

SOURCE=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=/opt/scanside
INBOX=/srv/scanside/inbox
EXTRAS=""
VENV=yes
DESTDIR=${DESTDIR:-}

usage() { sed -n '2,14p' "$0"; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --gpu) EXTRAS="[gpu]" ;;
        --inbox) INBOX=$2; shift ;;
        --prefix) PREFIX=$2; shift ;;
        --no-venv) VENV=no ;;
        -h|--help) usage 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage 2 ;;
    esac
    shift
done

say() { printf 'install.sh: %s\n' "$*"; }
system=yes
if [ -n "$DESTDIR" ]; then
    system=no
elif [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (or set DESTDIR to install into a tree)" >&2
    exit 1
fi

if [ "$system" = yes ] && ! id scanside >/dev/null 2>&1; then
    say "creating the scanside system user"
    useradd --system --home-dir /var/lib/scanside --shell /usr/sbin/nologin scanside
fi

if [ "$VENV" = yes ]; then
    say "installing scanside$EXTRAS into $PREFIX/venv"
    python3 -m venv "$DESTDIR$PREFIX/venv"
    "$DESTDIR$PREFIX/venv/bin/pip" install --quiet --upgrade pip
    "$DESTDIR$PREFIX/venv/bin/pip" install --quiet "$SOURCE$EXTRAS"
fi

say "inbox $INBOX"
install -d -m 2775 "$DESTDIR$INBOX"
if [ "$system" = yes ]; then
    chown scanside:scanside "$DESTDIR$INBOX"
fi

config="$DESTDIR/etc/scanside/scanside.toml"
install -d -m 0755 "$DESTDIR/etc/scanside"
if [ -e "$config" ]; then
    say "keeping the existing $config"
else
    say "writing $config"
    sed -e "s#^inbox = .*#inbox = \"$INBOX\"#" \
        -e "s#^state_dir = .*#state_dir = \"/var/lib/scanside\"#" \
        "$SOURCE/edge/default.toml" > "$config"
    chmod 0644 "$config"
fi

units="$DESTDIR/etc/systemd/system"
install -d -m 0755 "$units"
for unit in scanside.service scanside-engine.service; do
    sed -e "s#/opt/scanside#$PREFIX#g" -e "s#ReadWritePaths=/srv/scanside/inbox#ReadWritePaths=$INBOX#" \
        "$SOURCE/systemd/$unit" > "$units/$unit"
    chmod 0644 "$units/$unit"
done

if [ "$system" = yes ]; then
    systemctl daemon-reload
    systemctl enable --now scanside-engine.service scanside.service
    say "running: systemctl status scanside; journalctl -u scanside -f"
else
    say "installed into $DESTDIR (no user created, systemd not touched)"
fi
