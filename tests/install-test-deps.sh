#!/usr/bin/env bash
# Install the system packages the root/end-to-end tests need, on Debian 12, as root.
#
#   postfix           - tests/e2e runs a PRIVATE Postfix instance (own config, queue and log
#                       under a temp dir, own port on 127.0.0.1); the system instance is unused.
#   libsasl2-modules,
#   sasl2-bin         - Cyrus SASL PLAIN/LOGIN and saslpasswd2, for the SASL end-to-end test
#                       (private sasldb; saslauthd is not used).
#   nftables          - firewall action tests.
#   iptables, ipset   - iptables action tests (iptables-legacy, ip6tables-legacy and the
#                       libxtables extensions python-iptables loads; ipset sets with
#                       timeouts). Installing iptables does not change which backend the
#                       host's own `iptables` uses; the tests touch only their namespaces.
#   iproute2          - network namespace / address helpers for tests.
#   systemd           - systemd-analyze, to verify samples/smtpguard-logwatch.service
#                       (tests/test_operating_files.py); nothing is started.
#   redis-server      - fleet mode tests (tests/test_fleet.py) start their own private
#                       redis-server on a unix socket in a temp dir; Debian's system
#                       instance is stopped and disabled.
#   systemd-journal-remote - writes real journal files from the export format, which
#                       tests/test_journal.py follows with journalctl (no journald needed;
#                       the package's services ship disabled and are not started).
#
# Idempotent and non-interactive: apt-get is skipped when everything is already installed,
# and a package already installed is never upgraded (see fitting_version).
# Services that this run's installs may have started (postfix on port 25, saslauthd) are
# stopped and disabled. A Postfix that was installed before this run is left alone (the
# private test instance does not touch it).
set -euo pipefail

PACKAGES=(postfix libsasl2-modules sasl2-bin nftables iproute2 iptables ipset systemd
          systemd-journal-remote)
# Fleet mode: the tests run their own redis-server; the system one is quiesced below.
PACKAGES+=(redis-server)
# chromium - headless, renders the HTML report (tests/test_report_browser.py): the
#            screenshot is not blank and the page logs nothing to the console.
PACKAGES+=(chromium)
# gcc, python3-dev - `pip install .` builds the compiled parsing core (Cython) with them, so
#                    the tests run the compiled twin beside the pure-Python one.
PACKAGES+=(gcc python3-dev)
# cython3 - Debian's Cython 0.29: tests/test_core_install.py checks the core compiles with it.
PACKAGES+=(cython3)
# valgrind - bench/bench_instructions.py counts instructions per line with it
#            (tests/test_bench_instructions.py runs it on a sample).
PACKAGES+=(valgrind)
# The Debian package test (tests/test_debian_package.py): build the .deb from Debian's own
# packages and install it into a debootstrap'ed Debian 12 root (cached under
# /var/cache/smtpguard-test/). python3-apscheduler/-prometheus-client/-redis: the
# package's build dependencies (also let tests run against Debian's library versions).
# lintian is not installed on the host: it runs inside that root (debootstrap includes
# it), because on a host whose perl is older than the archive's (seen: 5.36.0-7+deb12u2
# against u3) lintian's XS modules need a perl upgrade, and this script upgrades nothing.
PACKAGES+=(debootstrap dpkg-dev debhelper dh-python pybuild-plugin-pyproject
           python3-all python3-setuptools python3-pyparsing python3-apscheduler
           python3-prometheus-client python3-redis)

say() { printf 'install-test-deps: %s\n' "$*"; }
die() { printf 'install-test-deps: ERROR: %s\n' "$*" >&2; exit 1; }

[[ ${EUID} -eq 0 ]] || die "must run as root (try: sudo $0)"
command -v apt-get >/dev/null 2>&1 || die "apt-get not found; this script supports Debian/Ubuntu only"
command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found"

is_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

# The installed packages that `apt-get install ARGS` would upgrade (simulated, as
# "name old -> new" words), empty when it only adds packages.
would_upgrade() {
    apt-get -s -q --no-install-recommends install "$@" 2>/dev/null \
        | sed -n 's/^Inst \([^ ]*\) \[\([^]]*\)\] (\([^ ]*\).*/\1 \2 -> \3,/p' | tr '\n' ' '
}

# PKG, or PKG=VERSION for the newest version of PKG that upgrades nothing installed.
fitting_version() {
    local pkg=$1 version
    if [[ -z $(would_upgrade "$pkg") ]]; then
        printf '%s\n' "$pkg"
        return 0
    fi
    for version in $(apt-cache madison "$pkg" | awk -F'|' '{gsub(/ /, "", $2); print $2}'); do
        if [[ -z $(would_upgrade "$pkg=$version") ]]; then
            printf '%s=%s\n' "$pkg" "$version"
            return 0
        fi
    done
    die "every version of $pkg would upgrade installed packages ($(would_upgrade "$pkg"));" \
        "install it yourself if you want that, then run this again"
}

missing=()
for pkg in "${PACKAGES[@]}"; do
    if is_installed "$pkg"; then
        say "$pkg is already installed ($(dpkg-query -W -f='${Version}' "$pkg"))"
    else
        missing+=("$pkg")
    fi
done

postfix_was_installed=yes
is_installed postfix || postfix_was_installed=no
saslbin_was_installed=yes
is_installed sasl2-bin || saslbin_was_installed=no
redis_was_installed=yes
is_installed redis-server || redis_was_installed=no

if ((${#missing[@]} == 0)); then
    say "all packages present; skipping apt-get"
else
    export DEBIAN_FRONTEND=noninteractive
    say "preseeding debconf: postfix/main_mailer_type = No configuration"
    command -v debconf-set-selections >/dev/null 2>&1 \
        || die "debconf-set-selections not found (package debconf missing?)"
    debconf-set-selections <<'EOF' || die "debconf-set-selections failed"
postfix postfix/main_mailer_type select No configuration
postfix postfix/mailname string localhost.localdomain
EOF
    say "running apt-get update"
    # Lock timeout: on fresh CI VMs unattended-upgrades often holds the dpkg lock for a while.
    apt-get -o DPkg::Lock::Timeout=300 update -q \
        || die "apt-get update failed (network or apt sources problem)"
    # Only what is missing, and never an upgrade of what the host already has: a test run
    # must not upgrade a mail host's systemd or libc as a side effect. A missing package
    # whose newest version needs a newer installed package (systemd-journal-remote pins
    # systemd's exact version) is installed at the version that fits the host instead.
    chosen=()
    for pkg in "${missing[@]}"; do
        chosen+=("$(fitting_version "$pkg")") || exit 1
    done
    upgrades=$(would_upgrade "${chosen[@]}")
    [[ -z $upgrades ]] || die "installing ${chosen[*]} would upgrade installed packages" \
        "($upgrades); install them yourself if you want that, then run this again"
    say "installing: ${chosen[*]}"
    apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends --no-upgrade \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${chosen[@]}" || die "apt-get install ${chosen[*]} failed"
    for pkg in "${missing[@]}"; do
        is_installed "$pkg" || die "$pkg still not installed after apt-get install"
    done
fi

# Postfix: the tests start their own instance with `postfix -c DIR`; make sure the binaries
# they need are where the helper looks for them.
for bin in /usr/sbin/postfix /usr/sbin/postconf /usr/sbin/postqueue /usr/sbin/saslpasswd2; do
    [[ -x "$bin" ]] || die "$bin missing or not executable after installing ${PACKAGES[*]}"
done
getent passwd postfix >/dev/null || die "user 'postfix' does not exist (broken postfix install?)"
getent group postdrop >/dev/null || die "group 'postdrop' does not exist (broken postfix install?)"

# Stop and disable a service that a package installed by this run may have started.
quiesce_service() {
    local unit=$1
    command -v systemctl >/dev/null 2>&1 || return 0
    if [[ -d /run/systemd/system ]]; then
        say "stopping the system $unit service (tests do not use it)"
        systemctl stop "$unit.service" >/dev/null 2>&1 || true
    fi
    # `disable` also works offline (no running systemd, e.g. in a container image build).
    say "disabling the system $unit service"
    systemctl disable "$unit.service" >/dev/null 2>&1 || true
}

if [[ $saslbin_was_installed == no ]]; then
    quiesce_service saslauthd
fi
if [[ $redis_was_installed == no ]]; then
    quiesce_service redis-server
fi

if [[ $postfix_was_installed == no ]]; then
    # A fresh install with "No configuration" normally starts nothing; other preseeds or an
    # existing /etc/postfix/main.cf can make the package start the system instance. Stop it.
    quiesce_service postfix
    if [[ -f /etc/postfix/main.cf ]] && /usr/sbin/postfix status >/dev/null 2>&1; then
        say "stopping the running system postfix instance"
        /usr/sbin/postfix stop || die "could not stop the system postfix instance"
    fi
elif [[ -f /etc/postfix/main.cf ]] && /usr/sbin/postfix status >/dev/null 2>&1; then
    say "note: a system postfix instance is running; leaving it alone" \
        "(the tests use their own config, queue and port)"
fi

say "postfix $(/usr/sbin/postconf -d -h mail_version 2>/dev/null || echo '?'), \
nft $(nft --version 2>/dev/null | awk '{print $2}' || echo '?'), \
$(iptables-legacy -V 2>/dev/null || echo 'iptables-legacy ?'), \
$(ipset version 2>/dev/null | awk '{sub(/,$/, "", $2); print "ipset", $2}' || echo 'ipset ?'), \
$(ip -V 2>/dev/null | grep -o 'iproute2-[^ ,]*' || echo 'iproute2 ?')"
command -v nft >/dev/null 2>&1 || die "nft not found after installing nftables"
command -v ip >/dev/null 2>&1 || die "ip not found after installing iproute2"
command -v redis-server >/dev/null 2>&1 || die "redis-server not found after installing it"
command -v systemd-analyze >/dev/null 2>&1 || die "systemd-analyze not found after installing systemd"
command -v journalctl >/dev/null 2>&1 || die "journalctl not found after installing systemd"
[[ -x /lib/systemd/systemd-journal-remote ]] \
    || die "/lib/systemd/systemd-journal-remote missing after installing systemd-journal-remote"
for bin in iptables-legacy ip6tables-legacy ipset; do
    command -v "$bin" >/dev/null 2>&1 || die "$bin not found after installing iptables and ipset"
done
say "done"
