#!/usr/bin/env bash
# Paired A/B of the native translator between two git revisions, on this machine's noise:
#     bash benchmarks/ab_builds.sh REV_A REV_B [BEAM=4] [PAIRS=5]
# Each revision is checked out in a scratch worktree (its C++ kernels build into the shared, hash-keyed
# cache), then this checkout's benchmarks/profile_native_translate.py runs alternately on A's and B's
# package, PAIRS times, and
# the sentences/s of each run are printed side by side. Compare pair by pair: a shared 2-core machine
# drifts by more than most single changes.
set -euo pipefail
a=$1; b=$2; beam=${3:-4}; pairs=${4:-5}
repo=$(git rev-parse --show-toplevel)
python=${PYTHON:-$repo/.venv/bin/python}
work=$(mktemp -d)
trap 'git -C "$repo" worktree remove --force "$work/a" >/dev/null 2>&1 || true; git -C "$repo" worktree remove --force "$work/b" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git -C "$repo" worktree add --detach -q "$work/a" "$a"
git -C "$repo" worktree add --detach -q "$work/b" "$b"
# both run this checkout's timing script (older revisions may predate it) on their own package
cp "$repo/benchmarks/profile_native_translate.py" "$work/a/benchmarks/"
cp "$repo/benchmarks/profile_native_translate.py" "$work/b/benchmarks/"
run() {
  (cd "$1" && PYTHONPATH="$1" "$python" benchmarks/profile_native_translate.py --beam "$beam" --passes 2 \
     | tail -1 | awk '{print $3}')
}
run "$work/a" >/dev/null; run "$work/b" >/dev/null  # build both kernels first
echo "pair  $a  $b   (sentences/s, beam $beam)"
for i in $(seq 1 "$pairs"); do
  echo "$i  $(run "$work/a")  $(run "$work/b")"
done
