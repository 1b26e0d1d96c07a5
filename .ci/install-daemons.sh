#!/usr/bin/env bash
# Installs the real syslog receivers the sink tests run against (issue 3), idempotently,
# on Debian 12:
#   - rsyslog (+ rsyslog-gnutls, + rsyslog-relp for imrelp) as a normal package: /usr/sbin/rsyslogd;
#   - syslog-ng-core, which conflicts with rsyslog as a package (both provide
#     system-log-daemon), unpacked with `dpkg -x` into $SYSLOG_NG_ROOT (default
#     /opt/syslog-ng) and run from there. Its shared-library dependencies do not
#     conflict, so they are installed with apt.
# The tests find the binaries through RSYSLOGD and SYSLOG_NG_ROOT (defaults as above).
set -euo pipefail

SYSLOG_NG_ROOT=${SYSLOG_NG_ROOT:-/opt/syslog-ng}
export DEBIAN_FRONTEND=noninteractive

# Libraries syslog-ng-core 3.38 (bookworm) links against: `apt-cache depends syslog-ng-core`.
SYSLOG_NG_LIBS="libcap2 libglib2.0-0 libivykis0 libjson-c5 libnet1 libpcre3 libssl3 libsystemd0 libwrap0"
PKGS="rsyslog rsyslog-gnutls rsyslog-relp iproute2 $SYSLOG_NG_LIBS"

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
updated=0
if [ -n "$missing" ]; then
    apt-get update -qq
    updated=1
    # --no-install-recommends: no logrotate etc.; the tests never run the system service.
    apt-get install -y -qq --no-install-recommends $missing
fi

if [ ! -x "$SYSLOG_NG_ROOT/usr/sbin/syslog-ng" ]; then
    [ "$updated" = 1 ] || apt-get update -qq
    tmp=$(mktemp -d)
    chmod 755 "$tmp" # apt-get download runs as _apt
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && apt-get download -qq syslog-ng-core)
    mkdir -p "$SYSLOG_NG_ROOT"
    dpkg -x "$tmp"/syslog-ng-core_*.deb "$SYSLOG_NG_ROOT"
fi

# Fail here, not in the tests, if a library is still missing.
export LD_LIBRARY_PATH="$SYSLOG_NG_ROOT/usr/lib/syslog-ng:$SYSLOG_NG_ROOT/usr/lib/x86_64-linux-gnu:$SYSLOG_NG_ROOT/usr/lib"
if ldd "$SYSLOG_NG_ROOT/usr/sbin/syslog-ng" | grep -q "not found"; then
    ldd "$SYSLOG_NG_ROOT/usr/sbin/syslog-ng" | grep "not found" >&2
    exit 1
fi
"$SYSLOG_NG_ROOT/usr/sbin/syslog-ng" --version | head -n 1
/usr/sbin/rsyslogd -v | head -n 1
