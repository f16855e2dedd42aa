#!/usr/bin/env bash
# How long CI takes: `.ci/run` on a fresh clone of the committed HEAD, with the build cache it
# uses (`CARGO_TARGET_DIR`, default /var/tmp/skyscore-target: warm when this machine built the
# project before, as CI's machine usually is). Records the seconds `.ci/run` printed for the
# Rust suite and the Python package, and whether it passed, in bench/results/ci-<cpu class>.json.
#
#   bench/ci_time.sh
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
clone=$(mktemp -d /var/tmp/skyscore-ci-clone.XXXXXX)
trap 'rm -rf "$clone"' EXIT
git clone -q "$repo" "$clone/skyscore"
commit=$(git -C "$clone/skyscore" rev-parse --short HEAD)
started=$(date +%s)
status=0
(cd "$clone/skyscore" && .ci/run) >"$clone/ci.log" 2>&1 || status=$?
secs=$(( $(date +%s) - started ))
tail -4 "$clone/ci.log"
python_s=$(sed -n 's/^ci: python package built and tested in \([0-9]*\) s$/\1/p' "$clone/ci.log")
total_s=$(sed -n 's/^ci: passed in \([0-9]*\) s$/\1/p' "$clone/ci.log")
flags=$(grep -o -w 'avx512_bf16\|avx512f\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')
case "$flags" in *avx512_bf16*) class=avx512bf16 ;; *avx512f*) class=avx512 ;; *) class=avx2 ;; esac
cat >"bench/results/ci-$class.json" <<EOF
{
  "what": ".ci/run on a fresh clone, the build cache as it was (warm when this machine built the project before)",
  "cpu": "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)",
  "cpu_class": "$class",
  "cores": $(nproc),
  "commit": "$commit",
  "exit_status": $status,
  "seconds_total": ${total_s:-null},
  "seconds_python_package": ${python_s:-null},
  "seconds_wall": $secs
}
EOF
cat "bench/results/ci-$class.json"
[ "$status" -eq 0 ]
