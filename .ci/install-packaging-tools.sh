#!/usr/bin/env bash
# Installs what packaging/build.sh and the packaging tests need, idempotently, on Debian 12 as
# root (CI, or a developer's machine):
#   - cargo-deb, cargo-generate-rpm, cargo-zigbuild (pinned: research rust-stack.md §3.5);
#   - zig, from PyPI's `ziglang` (cargo-zigbuild links against glibc 2.28 with it);
#   - rpm (rpm -qp to inspect the .rpm),
#     binutils (objdump), systemd (systemd-analyze), systemd-container (systemd-nspawn boots
#     the unit for real in .ci/package-install-test.sh), man-db (verify checks Documentation=man:).
# Each is skipped when the right version is already there, so a second run costs seconds.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

CARGO_DEB=3.8.0
CARGO_GENERATE_RPM=0.21.1
CARGO_ZIGBUILD=0.24.1
ZIGLANG=0.17.1

PKGS="rpm binutils systemd systemd-container man-db"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing
fi

# `cargo install --list` names each installed crate with its version: "cargo-deb v3.8.0:".
installed=$(cargo install --list)
for tool in "cargo-deb@$CARGO_DEB" "cargo-generate-rpm@$CARGO_GENERATE_RPM" "cargo-zigbuild@$CARGO_ZIGBUILD"; do
    name=${tool%@*}
    version=${tool#*@}
    if ! grep -qx "$name v$version:" <<<"$installed"; then
        cargo install --locked "$tool"
    fi
done

# Debian's own python3 refuses a global pip install (PEP 668) unless told; a pyenv or venv
# python takes it as it is.
if ! python3 -c "import ziglang, importlib.metadata as m; assert m.version('ziglang') == '$ZIGLANG'" 2>/dev/null; then
    python3 -m pip install --quiet "ziglang==$ZIGLANG" 2>/dev/null ||
        python3 -m pip install --quiet --break-system-packages "ziglang==$ZIGLANG"
fi
python3 -m ziglang version
cargo deb --version
cargo generate-rpm --version
cargo-zigbuild --version
