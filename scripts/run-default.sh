#!/usr/bin/env bash
# The main job, end to end on the default model: stories260K from the shared data folder, or,
# when that is missing, a small synthetic model generated on the spot.
# Today: load and validate the checkpoint (summary), evaluate its float perplexity, rotate it
# (QuaRot's fusion + R1..R4; outlier statistics before/after) and evaluate the rotated model
# against the original (same perplexity, KL divergence ~0); then quantize it W4A4KV4 with GPTQ
# (the paper's main setting), write the packed INT4 file, evaluate it with the integer kernels
# against the float model, and generate from it. The report joins this same command as it lands.
set -euo pipefail
cd "$(dirname "$0")/.."
# OpenMP workers wait passively (libgomp spins 300000 times by default, which starves the other
# thread on a busy 2-core machine); a value already set is kept.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
bash scripts/install-deps.sh
cmake --preset release -DQUAROT_WERROR=ON >/dev/null  # the flags scripts/test.sh uses: one build serves both
cmake --build --preset release -j "$(nproc)" >/dev/null
bin=build/release/tools
out=build/default-run
data="${QUAROT_DATA:-../shared/data}"
model="$data/stories260K/stories260K.bin"
mkdir -p "$out"
if [ -f "$model" ]; then
  "$bin/quarot-inspect" "$model" --tokenizer "$data/stories260K/tok512.bin"
  eval_args=(--ids "$data/tinystories/validation_100.tok512.ids" --ctx 512)
  stats_args=(--stats-ids "$data/stories260K/calib-t1-seed42.ids")
  quant_args=(--calib "$data/stories260K/calib-t1-seed42.ids" --seqlen 512 --eval-ids "$data/tinystories/validation_100.tok512.ids" --ctx 512)
  run_args=(--tokenizer "$data/stories260K/tok512.model" --prompt "Once upon a time")
else
  echo "run-default: $model not found; using a small synthetic model instead" >&2
  model="$out/synthetic"
  "$bin/quarot-synth" --preset tiny --seed 0 -o "$model"
  "$bin/quarot-inspect" "$model"
  # Token ids for evaluation: deterministic pseudo-text over the synthetic vocabulary.
  awk 'BEGIN { s = 1; for (l = 0; l < 16; l++) { line = "1"; for (i = 0; i < 255; i++) { s = (s * 1103515245 + 12345) % 2147483648; line = line " " (3 + s % 500) } print line } }' > "$out/synthetic.ids"
  eval_args=(--ids "$out/synthetic.ids" --ctx 256)
  stats_args=(--stats-ids "$out/synthetic.ids")
  quant_args=(--calib "$out/synthetic.ids" --nsamples 16 --seqlen 256 --eval-ids "$out/synthetic.ids" --ctx 256)
  run_args=()
fi
echo "== float model"
"$bin/quarot-eval" "$model" "${eval_args[@]}" --progress none --json "$out/eval-float.json"
echo "== rotate (QuaRot: fusion, R1, R2, R3, R4)"
"$bin/quarot-rotate" "$model" -o "$out/rotated" "${stats_args[@]}" --progress none
echo "== rotated model against the float model"
"$bin/quarot-eval" "$out/rotated" "${eval_args[@]}" --kld-base "$model" --progress none --json "$out/eval-rotated.json"
echo "== quantize W4A4KV4 (GPTQ, rotated) and write the packed INT4 model"
rm -f "$out/model.q4.safetensors"
"$bin/quarot-quantize" "$model" --preset w4a4kv4 "${quant_args[@]}" -o "$out/model.q4.safetensors" --progress plain --json "$out/quantize.json"
echo "== packed model, integer kernels"
"$bin/quarot-eval" "$out/model.q4.safetensors" "${eval_args[@]}" --kld-base "$model" --progress none --json "$out/eval-packed.json"
"$bin/quarot-run" "$out/model.q4.safetensors" "${run_args[@]}" -n 48
