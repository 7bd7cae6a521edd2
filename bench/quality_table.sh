#!/usr/bin/env bash
# The quantization quality table on the real TinyStories models: perplexity and KL divergence
# against the float model, for each setting with and without QuaRot's rotations.
# Calibration: stories260K/calib-t1-seed42.ids (128 x 512 tokens); evaluation: the TinyStories
# validation ids with the protocol of ../shared/data/MANIFEST.md (ctx = the model's seq_len).
# Usage: bash bench/quality_table.sh [model ...]   (default: stories260K salty260K)
# Note: the paper's W4A16 groups of 128 do not divide these models' widths (64, 172, 192), so
# W4A16 runs per output channel here.
set -euo pipefail
cd "$(dirname "$0")/.."
data="${QUAROT_DATA:-../shared/data}"
models=("$@")
[ ${#models[@]} -eq 0 ] && models=(stories260K salty260K)
cmake --preset release >/dev/null && cmake --build --preset release -j "$(nproc)" >/dev/null
q=build/release/tools/quarot-quantize
calib="$data/stories260K/calib-t1-seed42.ids"
ids="$data/tinystories/validation_100.tok512.ids"
configs=(
  "W8A8KV8 RTN|--preset w8a8kv8"
  "W4A16 RTN|--preset w4a16-rtn --w-group 0"
  "W4A16 GPTQ|--preset w4a16 --w-group 0"
  "W4A4KV4 RTN|--preset w4a4kv4-rtn"
  "W4A4KV4 GPTQ|--preset w4a4kv4"
)
for model in "${models[@]}"; do
  case "$model" in
    stories260K) file="$data/stories260K/stories260K.bin"; ctx=512 ;;
    salty260K) file="$data/salty260K/salty260K.bin"; ctx=256 ;;
    *) file="$model"; ctx=512 ;;
  esac
  echo
  echo "### $model (ctx $ctx)"
  echo
  echo "| setting | rotation | perplexity | vs float | KLD mean | KLD p99 | top-1 agree |"
  echo "|---|---|---|---|---|---|---|"
  first=1
  for entry in "${configs[@]}"; do
    name="${entry%%|*}"
    flags="${entry#*|}"
    for rot in on off; do
      extra=()
      [ "$rot" = off ] && extra=(--no-rotate)
      # shellcheck disable=SC2086
      out=$("$q" "$file" $flags "${extra[@]}" --calib "$calib" --seqlen "$ctx" --eval-ids "$ids" --ctx "$ctx" --progress none 2>/dev/null)
      ppl_line=$(grep '^perplexity:' <<<"$out")
      kld_line=$(grep '^KLD vs float:' <<<"$out")
      fppl=$(sed -E 's/^perplexity: float ([0-9.]+) .*/\1/' <<<"$ppl_line")
      qppl=$(sed -E 's/.*quantized ([0-9.]+) .*/\1/' <<<"$ppl_line")
      delta=$(sed -E 's/.*\(([-+0-9.]+%)\).*/\1/' <<<"$ppl_line")
      kmean=$(sed -E 's/.*mean ([0-9.]+),.*/\1/' <<<"$kld_line")
      kp99=$(sed -E 's/.*p99 ([0-9.]+);.*/\1/' <<<"$kld_line")
      top1=$(sed -E 's/.*agreement ([0-9.]+%).*/\1/' <<<"$kld_line")
      if [ $first = 1 ]; then
        echo "| float | – | $fppl | – | 0 | 0 | 100% |"
        first=0
      fi
      echo "| $name | $rot | $qppl | $delta | $kmean | $kp99 | $top1 |"
    done
  done
done
