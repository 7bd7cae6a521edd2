#!/usr/bin/env bash
# Runs every libFuzzer target until it reaches RUNS executions or its share of the time left,
# two targets at a time, and prints one table row per target (executions, exec/s, new units,
# crashes). Generated inputs go to a scratch folder, never into tests/fuzz/corpus.
# Usage: bench/fuzz_executions.sh FUZZ_BIN_DIR [RUNS=1000000] [END_EPOCH=now+3600] [WORK_DIR=mktemp]
#   FUZZ_BIN_DIR: build/fuzz/tests/fuzz (the `fuzz` preset).  END_EPOCH: `date -u +%s` by which
#   every target must be done; each target gets (END_EPOCH - now) / (targets left in its lane).
set -uo pipefail
cd "$(dirname "$0")/.."
bin_dir=$(realpath "${1:?usage: bench/fuzz_executions.sh FUZZ_BIN_DIR [RUNS] [END_EPOCH] [WORK_DIR]}")
runs="${2:-1000000}"
end_epoch="${3:-$(( $(date +%s) + 3600 ))}"
work="${4:-$(mktemp -d /tmp/fuzz-exec.XXXXXX)}"
mkdir -p "$work"
# Fast parsers first; two lanes, run side by side.
lane_a=(fuzz_ids fuzz_hf_index fuzz_tokenizer_bin fuzz_llama2c fuzz_gguf fuzz_sentencepiece)
lane_b=(fuzz_config fuzz_tasks fuzz_safetensors fuzz_tokenizer_json fuzz_packed)

run_lane() {
  local -a targets=("$@")
  local left=${#targets[@]} t budget
  for t in "${targets[@]}"; do
    budget=$(( (end_epoch - $(date +%s)) / left ))
    (( budget < 10 )) && budget=10
    mkdir -p "$work/$t.corpus" "$work/$t.artifacts"
    echo "$bin_dir/$t -runs=$runs -max_total_time=$budget -print_final_stats=1" \
      "-artifact_prefix=$work/$t.artifacts/ $work/$t.corpus tests/fuzz/corpus/$t" > "$work/$t.cmd"
    local start=$(date +%s)
    nice -n 19 "$bin_dir/$t" -runs="$runs" -max_total_time="$budget" -print_final_stats=1 \
      -artifact_prefix="$work/$t.artifacts/" "$work/$t.corpus" "tests/fuzz/corpus/$t" \
      > "$work/$t.log" 2>&1
    echo "$? $(( $(date +%s) - start ))" > "$work/$t.rc"
    left=$(( left - 1 ))
  done
}
run_lane "${lane_a[@]}" & pid_a=$!
run_lane "${lane_b[@]}" & pid_b=$!
wait "$pid_a" "$pid_b"

echo "| target | executions | exec/s | new units | corpus after | crashes | wall s | budget s |"
echo "|---|---|---|---|---|---|---|---|"
for t in "${lane_a[@]}" "${lane_b[@]}"; do
  log="$work/$t.log"
  stat() { grep -m1 "stat::$1:" "$log" | awk '{print $2}'; }
  read -r rc wall < "$work/$t.rc"
  crashes=$(find "$work/$t.artifacts" -type f | wc -l)
  budget=$(sed -n 's/.*-max_total_time=\([0-9]*\).*/\1/p' "$work/$t.cmd")
  echo "| $t | $(stat number_of_executed_units) | $(stat average_exec_per_sec) | $(stat new_units_added) | $(find "$work/$t.corpus" -type f | wc -l) | $crashes (rc $rc) | $wall | $budget |"
done
echo "logs, commands and any crash inputs: $work"
