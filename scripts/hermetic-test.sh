#!/usr/bin/env bash
# The README's claim that the tests never leave the machine or touch the user's files, checked:
# `cargo test --workspace --locked` in a network namespace with only loopback up (`unshare -n`;
# the cluster tests talk over loopback), with an empty HOME and TMPDIR of its own, already
# built (the build itself needs the registry: run `cargo test --no-run` first). Passes when the
# suite passes and HOME and TMPDIR are empty afterwards. Needs root (or user namespaces).
# Figures go to bench/results/hermetic-<cpu class>.json.
#
#   scripts/hermetic-test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/skyscore-target}"
cargo test --workspace --locked --no-run -q 2>/dev/null
home=$(mktemp -d /var/tmp/skyscore-hermetic-home.XXXXXX)
tmp=$(mktemp -d /var/tmp/skyscore-hermetic-tmp.XXXXXX)
trap 'rm -rf "$home" "$tmp"' EXIT
# cargo and rustup live under the real HOME: name them explicitly, then hide HOME.
cargo_bin=$(command -v cargo)
export RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}" CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
started=$(date +%s)
status=0
unshare -n env HOME="$home" TMPDIR="$tmp" CARGO_NET_OFFLINE=true sh -c \
  "ip link set lo up && ip route get 1.1.1.1 >/dev/null 2>&1 && echo 'network reachable' && exit 3; \
   '$cargo_bin' test --workspace --locked --offline" >"$tmp.log" 2>&1 || status=$?
secs=$(( $(date +%s) - started ))
passed=$(grep -o '[0-9]* passed' "$tmp.log" | awk '{s += $1} END {print s + 0}')
failed=$(grep -o '[0-9]* failed' "$tmp.log" | awk '{s += $1} END {print s + 0}')
skipped=$(grep -c '^SKIPPED' "$tmp.log" || true)
left_home=$(find "$home" -mindepth 1 | wc -l)
left_tmp=$(find "$tmp" -mindepth 1 | wc -l)
tail -5 "$tmp.log"
rm -f "$tmp.log"
flags=$(grep -o -w 'avx512_bf16\|avx512f\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')
case "$flags" in *avx512_bf16*) class=avx512bf16 ;; *avx512f*) class=avx512 ;; *) class=avx2 ;; esac
commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!bench/results' || echo "+uncommitted")
cat >"bench/results/hermetic-$class.json" <<EOF
{
  "what": "cargo test --workspace --locked --offline under unshare -n (loopback only), empty HOME and TMPDIR",
  "cpu_class": "$class",
  "commit": "$commit",
  "exit_status": $status,
  "tests_passed": $passed,
  "tests_failed": $failed,
  "skipped_lines": $skipped,
  "files_left_in_home": $left_home,
  "files_left_in_tmpdir": $left_tmp,
  "seconds": $secs
}
EOF
cat "bench/results/hermetic-$class.json"
[ "$status" -eq 0 ] && [ "$left_home" -eq 0 ] && [ "$left_tmp" -eq 0 ]
