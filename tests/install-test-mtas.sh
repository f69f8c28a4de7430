#!/usr/bin/env bash
# Unpack Exim and Sendmail from Debian's packages for the real-MTA tests, WITHOUT
# installing them: either package would remove Postfix (they conflict as the
# mail-transport-agent). The tests run the unpacked binaries in private namespaces
# and find them through SMTPGUARD_MTA_ROOT (scripts/test-all exports it).
#
#   tests/install-test-mtas.sh [ROOT]      (default /opt/smtpguard-test-mta/root)
set -euo pipefail

ROOT=${1:-/opt/smtpguard-test-mta/root}
PACKAGES=(exim4-base exim4-config exim4-daemon-light sendmail-base sendmail-bin sendmail-cf
          m4 libidn12 liblockfile1 libwrap0)

say() { printf 'install-test-mtas: %s\n' "$*"; }
die() { printf 'install-test-mtas: ERROR: %s\n' "$*" >&2; exit 1; }

if [[ -x "$ROOT/usr/sbin/exim4" && -x "$ROOT/usr/sbin/makemap" && -e "$ROOT/.complete" ]]; then
    say "already unpacked in $ROOT"
    exit 0
fi
command -v apt-get >/dev/null 2>&1 || die "apt-get not found; Debian/Ubuntu only"
command -v dpkg-deb >/dev/null 2>&1 || die "dpkg-deb not found"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
if ! apt-get download "${PACKAGES[@]}" >/dev/null 2>&1; then
    say "package lists stale; running apt-get update"
    apt-get update -qq || die "apt-get update failed"
    apt-get download "${PACKAGES[@]}" >/dev/null || die "apt-get download failed"
fi
rm -rf "$ROOT"
mkdir -p "$ROOT"
for deb in ./*.deb; do
    dpkg-deb -x "$deb" "$ROOT" || die "cannot unpack $deb"
done
# Nothing unpacked here may run setuid: these binaries are for tests only.
find "$ROOT" -type f -perm /6000 -exec chmod ug-s {} +
touch "$ROOT/.complete"
say "unpacked ${#PACKAGES[@]} packages into $ROOT"
