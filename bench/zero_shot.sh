#!/usr/bin/env bash
# Zero-shot multiple choice on stories260K: float vs W4A4KV4 (GPTQ, rotated; packed INT4 with the
# integer kernels, and its fake-quant simulation) on HellaSwag and PIQA, first N items each.
# Usage: bench/zero_shot.sh [HELLASWAG_LIMIT] [PIQA_LIMIT] [TASKS]   (from the repository root, after a
# release build; QUAROT_DATA overrides ../shared/data). Results: build/zero-shot/*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
hs_limit="${1:-200}"
piqa_limit="${2:-500}"
tasks="${3:-hellaswag piqa}"
bin=build/release/tools
data="${QUAROT_DATA:-../shared/data}"
out=build/zero-shot
mkdir -p "$out"
model="$data/stories260K/stories260K.bin"
tok="$data/stories260K/tok512.model"
[ -f "$out/hellaswag_val_full.txt" ] || bzip2 -dc "$data/eval/hellaswag/hellaswag_val_full.txt.bz2" > "$out/hellaswag_val_full.txt"
[ -f "$out/model.q4.safetensors" ] ||
  "$bin/quarot-quantize" "$model" --preset w4a4kv4 --calib "$data/stories260K/calib-t1-seed42.ids" --seqlen 512 \
    --nsamples 32 -o "$out/model.q4.safetensors" --progress none
run() {  # name model task file limit [extra]
  "$bin/quarot-eval" "$2" --tokenizer "$tok" --task "$3" --task-file "$4" --limit "$5" "${@:6}" --progress none \
    --json "$out/$1-$3.json" | sed -n 's/^\(acc\|acc_norm\|time\): */'"$1 $3"' \1 /p'
}
for task in $tasks; do
  if [ "$task" = hellaswag ]; then file="$out/hellaswag_val_full.txt"; limit=$hs_limit
  else file="$data/eval/piqa/valid.jsonl"; limit=$piqa_limit; fi
  run float "$model" $task "$file" "$limit"
  run simulated "$out/model.q4.safetensors" $task "$file" "$limit" --simulate
  run packed "$out/model.q4.safetensors" $task "$file" "$limit"
done
