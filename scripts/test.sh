#!/usr/bin/env bash
# Builds and runs the whole test suite: by default in the release and the ASan+UBSan builds,
# warnings as errors. `scripts/test.sh release` runs one preset only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
presets=("$@")
[ ${#presets[@]} -eq 0 ] && presets=(release asan)
jobs=$(nproc)
for p in "${presets[@]}"; do
  echo "== test.sh: $p: configure, build, test"
  cmake --preset "$p" -DQUAROT_WERROR=ON >/dev/null
  cmake --build --preset "$p" -j "$jobs"
  ctest --preset "$p" -j "$jobs"
done
