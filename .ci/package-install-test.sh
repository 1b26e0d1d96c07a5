#!/usr/bin/env bash
# Installs the .deb from target/packages/ on this machine (as root) and checks what an operator
# gets: files and modes, the system user and group, the conffile, the binary run as the service
# user, the unit verified in place, and what `remove` and `purge` leave behind.
# Run after `bash packaging/build.sh` (.ci/run does). Leaves the package purged; the system
# user stays, as after any purge on Debian.
set -euo pipefail
cd "$(dirname "$0")/.."

PKG=defender-bridge
USER_NAME=defender-bridge
failures=0
fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}
pass() { echo "ok: $*"; }

# "mode owner:group" of a path, as stat prints it.
expect_stat() { # path mode owner:group
    local got
    if ! got=$(stat -c '%a %U:%G' "$1" 2>/dev/null); then
        fail "$1 is missing"
    elif [ "$got" != "$2 $3" ]; then
        fail "$1 is $got, expected $2 $3"
    else
        pass "$1 $got"
    fi
}

deb=$(ls target/packages/*.deb 2>/dev/null | head -n 1 || true)
if [ -z "$deb" ]; then
    echo "no .deb in target/packages/: run bash packaging/build.sh first" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive

# A run interrupted earlier may have left it installed.
if dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null | grep -qv "not-installed"; then
    apt-get purge -y -qq "$PKG" >/dev/null
fi

echo "--- dpkg -i $deb"
dpkg -i "$deb"

echo "--- files"
expect_stat /usr/bin/defender-bridge 755 root:root
expect_stat /usr/lib/systemd/system/defender-bridge.service 644 root:root
expect_stat /etc/defender-bridge 750 root:$USER_NAME
expect_stat /etc/defender-bridge/config.toml 640 root:$USER_NAME
expect_stat /var/lib/defender-bridge 700 $USER_NAME:$USER_NAME
for f in formats/*.toml; do
    expect_stat "/usr/share/defender-bridge/$f" 644 root:root
done
expect_stat /usr/share/man/man1/defender-bridge.1.gz 644 root:root
expect_stat /usr/share/man/man1/defender-bridge-run.1.gz 644 root:root
expect_stat /usr/share/bash-completion/completions/defender-bridge 644 root:root
expect_stat /usr/share/zsh/vendor-completions/_defender-bridge 644 root:root
expect_stat /usr/share/fish/vendor_completions.d/defender-bridge.fish 644 root:root
if grep -qx /etc/defender-bridge/config.toml /var/lib/dpkg/info/$PKG.conffiles; then
    pass "config.toml is a conffile"
else
    fail "config.toml is not a conffile"
fi
if man -w defender-bridge-check >/dev/null 2>&1; then pass "man defender-bridge-check"; else fail "man -w defender-bridge-check"; fi

echo "--- user and group"
if entry=$(getent passwd $USER_NAME); then
    uid=$(cut -d: -f3 <<<"$entry")
    shell=$(cut -d: -f7 <<<"$entry")
    home=$(cut -d: -f6 <<<"$entry")
    # adduser --system takes uids below 1000 (Debian's FIRST_UID).
    if [ "$uid" -lt 1000 ]; then pass "system user uid $uid"; else fail "user uid $uid is not a system uid"; fi
    [ "$shell" = /usr/sbin/nologin ] && pass "shell $shell" || fail "shell $shell"
    [ "$home" = /var/lib/defender-bridge ] && pass "home $home" || fail "home $home"
else
    fail "no user $USER_NAME"
fi
getent group $USER_NAME >/dev/null && pass "group $USER_NAME" || fail "no group $USER_NAME"

echo "--- not enabled or started on install"
if ls /etc/systemd/system/*.wants/defender-bridge.service >/dev/null 2>&1; then
    fail "the service was enabled on install"
else
    pass "not enabled"
fi
# By executable, not by name: other checkouts' tests may be running their own build.
running=""
for p in /proc/[0-9]*; do
    [ "$(readlink "$p/exe" 2>/dev/null)" = /usr/bin/defender-bridge ] && running="$running ${p#/proc/}"
done
[ -z "$running" ] && pass "not running" || fail "/usr/bin/defender-bridge is running:$running"

echo "--- the unit, installed"
# With the binary and the man page in place, nothing needs substituting.
if out=$(systemd-analyze verify /usr/lib/systemd/system/defender-bridge.service 2>&1) &&
    ! grep -q defender-bridge <<<"$out"; then
    pass "systemd-analyze verify"
else
    fail "systemd-analyze verify: $out"
fi

echo "--- run as the service user"
as_user() { setpriv --reuid=$USER_NAME --regid=$USER_NAME --init-groups -- "$@"; }
if v=$(as_user defender-bridge --version); then pass "$v"; else fail "--version as $USER_NAME"; fi
# The example config's secrets: one from the environment, one from a file beside it.
# Owned by the service user, 0600: the loader warns about a secret that others can read.
install -m 0600 -o $USER_NAME -g $USER_NAME /dev/null /etc/defender-bridge/fabrikam.secret
echo dummy-secret >/etc/defender-bridge/fabrikam.secret
set +e
check=$(as_user env CONTOSO_CLIENT_SECRET=dummy-secret \
    defender-bridge check --config /etc/defender-bridge/config.toml 2>&1)
rc=$?
set -e
echo "$check"
if [ $rc -eq 0 ]; then
    pass "check --config /etc/defender-bridge/config.toml"
elif grep -q "OK: 2 tenant(s), 2 destination(s)" <<<"$check" &&
    ! grep "FAILED" <<<"$check" | grep -qv "^destination "; then
    # The file itself is valid; only resolving the example's SIEM hosts failed: offline
    # `check` still resolves destinations (this machine has no DNS). Reported, not hidden.
    echo "NOTE: check exits $rc: the config is valid, but offline check still resolves the" \
        "example's destinations, which fails without DNS (see above)"
else
    fail "check exited $rc"
fi
# The queue can be opened (and is created) by the service user in its state directory.
if as_user env CONTOSO_CLIENT_SECRET=dummy-secret \
    defender-bridge dead-letters list --config /etc/defender-bridge/config.toml; then
    pass "dead-letters list as $USER_NAME"
else
    fail "dead-letters list as $USER_NAME"
fi
# Something of the daemon's in its state directory, written as the service user (UMask=0077
# makes the daemon's own files 0600), for remove and purge below.
as_user sh -c 'umask 077 && echo state >/var/lib/defender-bridge/state-test' &&
    pass "the service user writes its state directory" || fail "cannot write /var/lib/defender-bridge"

echo "--- the service under systemd (a container booted from this machine's /usr)"
# No systemd runs as PID 1 on CI machines, so systemd-nspawn boots one: the host's /usr (with
# the package installed) read only, everything else on tmpfs but for the users, groups and CA
# certificates (the HTTPS client needs system roots), loopback only. There the real
# unit starts the daemon with a config of its own (a tenant whose sign-in host refuses
# connections, a destination on loopback), under its sandbox, as Type=notify, with a 2 s
# watchdog from a drop-in.
ns=$(mktemp -d)
mkdir -p "$ns/out" "$ns/dropin" "$ns/etc"
cat >"$ns/etc/config.toml" <<'TOML'
[[tenant]]
name = "contoso"
tenant_id = "aaaaaaaa-0000-4000-8000-000000000001"
client_id = "11111111-2222-3333-4444-555555555555"
client_secret = { env = "CONTOSO_CLIENT_SECRET" }
authority_host = "https://127.0.0.1:1"
api_base_url = "https://127.0.0.1:1"

[[destination]]
url = "tcp://127.0.0.1:5514"
format = "json"
TOML
printf 'CONTOSO_CLIENT_SECRET=dummy-secret\n' >"$ns/etc/environment"
chown -R root:$USER_NAME "$ns/etc"
chmod 0750 "$ns/etc"
chmod 0640 "$ns/etc/config.toml"
chmod 0600 "$ns/etc/environment"
printf '[Service]\nWatchdogSec=2s\n' >"$ns/dropin/watchdog.conf"
cat >"$ns/inside.sh" <<'SH'
#!/bin/sh
# The container's only job; what it prints is read by the host.
exec >/srv/out/log 2>&1
show() { systemctl show -p ActiveState,SubState,MainPID,NRestarts,Result defender-bridge.service | tr '\n' ' '; echo; }
systemctl start defender-bridge.service
echo "start=$?"
echo "after-start $(show)"
# The 2 s watchdog would have killed an unfed daemon three times by now.
sleep 7
echo "after-sleep $(show)"
echo "state $(stat -c '%a %U:%G' /var/lib/defender-bridge /var/lib/defender-bridge/queue.redb | tr '\n' ' ')"
systemctl stop defender-bridge.service
echo "after-stop $(show)"
journalctl -u defender-bridge.service --no-pager -o cat
echo finished
systemctl poweroff
SH
chmod 0755 "$ns/inside.sh"
printf '[Service]\nType=oneshot\nExecStart=/srv/inside.sh\n' >"$ns/inside.service"
has() { grep -q -- "$2" <<<"$1"; }
if command -v systemd-nspawn >/dev/null; then
    timeout 180 systemd-nspawn -D / --volatile=yes --register=no --keep-unit \
        --private-network --machine=defender-bridge-test --console=pipe \
        --bind-ro=/etc/passwd --bind-ro=/etc/group --bind-ro=/etc/nsswitch.conf --bind-ro=/etc/ssl \
        --bind="$ns/out:/srv/out" --bind-ro="$ns/inside.sh:/srv/inside.sh" \
        --bind-ro="$ns/inside.service:/etc/systemd/system/inside.service" \
        --bind-ro="$ns/etc:/etc/defender-bridge" \
        --bind-ro="$ns/dropin:/etc/systemd/system/defender-bridge.service.d" \
        -b systemd.unit=inside.service </dev/null >"$ns/nspawn.log" 2>&1 || true
    log=$(cat "$ns/out/log" 2>/dev/null || true)
    echo "$log"
    first=$(grep '^after-start' <<<"$log" || true)
    later=$(grep '^after-sleep' <<<"$log" || true)
    stopped=$(grep '^after-stop' <<<"$log" || true)
    pid=$(grep -o 'MainPID=[0-9]*' <<<"$first" || true)
    if ! has "$log" '^finished'; then
        fail "the container did not run the test: $(cat "$ns/nspawn.log")"
    else
        has "$log" '^start=0' && pass "systemctl start returned once READY=1 came" || fail "systemctl start failed"
        has "$first" 'ActiveState=active' && has "$first" 'SubState=running' &&
            pass "running" || fail "not running: $first"
        if has "$later" 'SubState=running' && has "$later" 'NRestarts=0' && has "$later" "$pid "; then
            pass "watchdog fed ($pid, no restart in 7 s)"
        else
            fail "watchdog: $first / $later"
        fi
        has "$log" '^state 700 defender-bridge:defender-bridge 600 defender-bridge:defender-bridge' &&
            pass "state directory and queue" || fail "state: $(grep '^state' <<<"$log")"
        has "$stopped" 'ActiveState=inactive' && has "$stopped" 'Result=success' &&
            pass "stopped cleanly" || fail "stop: $stopped"
        if grep -qi "operation not permitted\|permission denied\|bad system call" <<<"$log"; then
            fail "the sandbox refused the daemon something (see the journal above)"
        else
            pass "no EPERM from the sandbox in the journal"
        fi
    fi
else
    fail "systemd-nspawn is missing: bash .ci/install-packaging-tools.sh installs it"
fi
rm -rf "$ns"

echo "--- reinstall keeps a changed conffile"
echo "# changed by the operator" >>/etc/defender-bridge/config.toml
dpkg -i --force-confold "$deb" >/dev/null
grep -q "changed by the operator" /etc/defender-bridge/config.toml &&
    pass "changed config kept" || fail "changed config replaced"
expect_stat /etc/defender-bridge/config.toml 640 root:$USER_NAME

echo "--- apt-get remove keeps config and state"
apt-get remove -y -qq $PKG >/dev/null
[ ! -e /usr/bin/defender-bridge ] && pass "binary removed" || fail "binary still there"
[ -f /etc/defender-bridge/config.toml ] && pass "config kept" || fail "config removed"
[ -f /etc/defender-bridge/fabrikam.secret ] && pass "secret kept" || fail "secret removed"
[ -f /var/lib/defender-bridge/state-test ] && pass "state kept" || fail "state removed"

echo "--- apt-get purge removes them"
apt-get purge -y -qq $PKG >/dev/null
[ ! -e /etc/defender-bridge ] && pass "/etc/defender-bridge removed" || fail "/etc/defender-bridge left"
[ ! -e /var/lib/defender-bridge ] && pass "/var/lib/defender-bridge removed" || fail "/var/lib/defender-bridge left"
if dpkg-statoverride --list | grep -q defender-bridge; then
    fail "stat overrides left: $(dpkg-statoverride --list | grep defender-bridge)"
else
    pass "no stat overrides left"
fi
left=$(find /etc /var /tmp /run -xdev \( -user $USER_NAME -o -group $USER_NAME \) -print 2>/dev/null | head -n 5)
[ -z "$left" ] && pass "no files of $USER_NAME left" || fail "files of $USER_NAME left: $left"

if [ $failures -gt 0 ]; then
    echo "package install test: $failures check(s) failed" >&2
    exit 1
fi
echo "package install test: all checks passed"
