#!/usr/bin/env bash
# Builds the .deb and the .rpm into target/packages/:
#   bash packaging/build.sh
# The binary is built once, with cargo-zigbuild against glibc 2.28 (RHEL 8, Debian 10,
# Ubuntu 20.04 and newer), with the default features (so `demo` is in it); both packages hold
# that same binary, its man pages and its shell completions, which the binary writes itself.
# Needs cargo-deb, cargo-generate-rpm, cargo-zigbuild and zig (pip's `ziglang`);
# .ci/install-packaging-tools.sh installs them on Debian 12.
# CARGO_BUILD_JOBS limits the build's parallelism as usual.
set -euo pipefail
cd "$(dirname "$0")/.."

TRIPLE=x86_64-unknown-linux-gnu
GLIBC=2.28
OUT=target/packages
ASSETS=target/assets

for tool in cargo-deb cargo-generate-rpm cargo-zigbuild; do
    if ! command -v "$tool" >/dev/null; then
        echo "packaging/build.sh: $tool is missing; bash .ci/install-packaging-tools.sh installs it" >&2
        exit 1
    fi
done

cargo zigbuild --release --locked --target "$TRIPLE.$GLIBC"
bin="${CARGO_TARGET_DIR:-target}/$TRIPLE/release/defender-bridge"

# Man pages and completions from the binary's own clap definitions (`generate` is hidden).
rm -rf "$ASSETS"
mkdir -p "$ASSETS/man" "$ASSETS/complete"
"$bin" generate man --dir "$ASSETS/man"
gzip -9 -n "$ASSETS"/man/*.1
"$bin" generate complete-bash >"$ASSETS/complete/defender-bridge.bash"
"$bin" generate complete-zsh >"$ASSETS/complete/_defender-bridge"
"$bin" generate complete-fish >"$ASSETS/complete/defender-bridge.fish"

rm -rf "$OUT"
mkdir -p "$OUT"
# --no-build: package the zigbuild binary above, not one cargo-deb would build against the
# build machine's newer glibc. The binary is stripped already ([profile.release] strip).
cargo deb --no-build --no-strip --target "$TRIPLE" --output "$OUT/"
# gzip: every rpm reads it (zstd needs rpm 4.14+ built with it).
cargo generate-rpm --target "$TRIPLE" --payload-compress gzip --output "$OUT/"
ls -l "$OUT"
