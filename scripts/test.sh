#!/usr/bin/env bash
# Builds and runs the whole test suite: by default in the release and the ASan+UBSan builds,
# warnings as errors. `scripts/test.sh release` runs one preset only.
set -euo pipefail
cd "$(dirname "$0")/.."
# OpenMP workers wait passively (libgomp spins 300000 times by default, which starves the other
# thread on a busy 2-core machine); a value already set is kept.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
bash scripts/install-deps.sh
presets=("$@")
[ ${#presets[@]} -eq 0 ] && presets=(release asan)
jobs=$(nproc)
for p in "${presets[@]}"; do
  echo "== test.sh: $p: configure, build, test"
  cmake --preset "$p" -DQUAROT_WERROR=ON >/dev/null
  cmake --build --preset "$p" -j "$jobs"
  # ctest runs $jobs tests at once: each test's OpenMP team defaults to one thread so the suite
  # never oversubscribes the cores (a 35 s test hit its 300 s timeout beside an all-core one);
  # tests that check threaded paths set their thread counts themselves.
  OMP_NUM_THREADS="${QUAROT_TEST_THREADS:-1}" ctest --preset "$p" -j "$jobs"
done
