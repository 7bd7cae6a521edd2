#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan+UBSan) and runs each for a bounded time over its
# corpus in tests/fuzz/corpus/<target> (read-only; new inputs go to a scratch folder).
# Usage: scripts/fuzz.sh [seconds per target, default 60] (one run per target in the list below; .ci/run gives each 45 s)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
bash scripts/install-deps.sh
cmake --preset fuzz -DQUAROT_WERROR=ON >/dev/null
cmake --build --preset fuzz -j "$(nproc)"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in fuzz_safetensors fuzz_hf_index fuzz_llama2c fuzz_tokenizer_json fuzz_tasks fuzz_tokenizer_bin fuzz_ids fuzz_config fuzz_sentencepiece fuzz_packed fuzz_gguf; do
  mkdir -p "$scratch/$target"
  echo "== fuzz.sh: $target for ${seconds}s"
  build/fuzz/tests/fuzz/$target -max_total_time="$seconds" -print_final_stats=1 \
    "$scratch/$target" "tests/fuzz/corpus/$target" 2>"$scratch/$target.log" || {
      tail -50 "$scratch/$target.log"; echo "fuzz.sh: $target FOUND A CRASH"; exit 1; }
  grep -E "^Done|stat::number_of_executed_units|stat::new_units_added" "$scratch/$target.log" || true
done
