#!/usr/bin/env bash
# Issue 17's table: the packed integer path on the three real 260K models, perplexity and KLD vs
# the float model against bits per weight and bits per cached K/V element, for W4A4KV4 (the
# paper's recipe: KV clip 0.95), W4A4K8V4, per-group activations (--a-group 16: four groups per
# token of the 64-wide models) and the precision planner at two budgets (--budget-kv-bits 5, 6,
# with --a-group 16; and with --budget-act-bits 5, 6 on top of --budget-kv-bits 6: W4A8 layers;
# and --target-kld per model, K, V and activation parts in one order; planned on 2 calibration windows), GPTQ with 32 calibration windows of ctx tokens, evaluated on
# the first 10 windows (stories260K), 20 (salty260K) or all 32 (aidreams260K): sized for a
# loaded 2-core machine (NSAMPLES, PLAN_WINDOWS and CHUNKS_<model> override).
# stories260K / salty260K: stories260K/calib-t1-seed42.ids for calibration, the TinyStories
# validation ids for evaluation (ctx 512 / 256), as bench/kv_mixed_table.sh.
# aidreams260K has no stream of its own: both are sampled from the float model at temperature 1
# (quarot-bench-sample-ids, bench/sample_ids.cpp): calibration seed 42, 128 lines of 128 tokens;
# evaluation seed 4242, 32 lines of 128 tokens (ctx 128, its context); BOS = 1 first on each line.
# Usage: bash bench/planner_table.sh [model ...]   (default: stories260K salty260K aidreams260K)
set -euo pipefail
cd "$(dirname "$0")/.."
data="${QUAROT_DATA:-../shared/data}"
models=("$@")
[ ${#models[@]} -eq 0 ] && models=(stories260K salty260K aidreams260K)
[ "${QUAROT_NO_BUILD:-0}" = 1 ] || nice -n 19 cmake --build --preset release -j 2 --target quarot-quantize quarot-bench-sample-ids >/dev/null
q="${QUAROT_QUANTIZE:-build/release/tools/quarot-quantize}"
sampler="${QUAROT_SAMPLER:-build/release/bench/quarot-bench-sample-ids}"
nsamples="${NSAMPLES:-32}"
plan_windows="${PLAN_WINDOWS:-2}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
configs=(
  "W4A4KV4 (paper recipe, KV clip 0.95)|--preset w4a4kv4 --kv-clip 0.95"
  "W4A4K8V4 (preset)|--preset w4a4k8v4"
  "W4A4K8V4, A4 per group of 16|--preset w4a4k8v4 --a-group 16"
  "planner, budget 5, A4 per group of 16|--preset w4a4kv4 --budget-kv-bits 5 --a-group 16"
  "planner, budget 6, A4 per group of 16|--preset w4a4kv4 --budget-kv-bits 6 --a-group 16"
  "planner, KV budget 6 + act budget 5, A4/A8 per group of 16|--preset w4a4kv4 --budget-kv-bits 6 --budget-act-bits 5 --a-group 16"
  "planner, KV budget 6 + act budget 6, A4/A8 per group of 16|--preset w4a4kv4 --budget-kv-bits 6 --budget-act-bits 6 --a-group 16"
  "planner, target KLD @TARGET@ (K, V and activation parts in one order), A4/A8 per group of 16|--preset w4a4kv4 --target-kld @TARGET@ --a-group 16"
)
[ -n "${CONFIGS:-}" ] && mapfile -t configs < <(printf '%s\n' "${configs[@]}" | sed -n "${CONFIGS}p")  # e.g. CONFIGS=1,3
for model in "${models[@]}"; do
  calib="$data/stories260K/calib-t1-seed42.ids"
  ids="$data/tinystories/validation_100.tok512.ids"
  case "$model" in
    stories260K) file="$data/stories260K/stories260K.bin"; ctx=512; chunks="${CHUNKS_stories260K:-10}" ;;
    salty260K) file="$data/salty260K/salty260K.bin"; ctx=256; chunks="${CHUNKS_salty260K:-20}" ;;
    aidreams260K)
      file="$data/aidreams260K/aidreams260K.bin"; ctx=128; chunks="${CHUNKS_aidreams260K:-0}"
      "$sampler" "$file" --seed 42 --lines 128 >"$tmp/calib.ids"
      "$sampler" "$file" --seed 4242 --lines 32 >"$tmp/eval.ids"
      calib="$tmp/calib.ids"; ids="$tmp/eval.ids" ;;
    *) echo "unknown model $model" >&2; exit 2 ;;
  esac
  # The target-KLD row's calibration KLD target (TARGET_<model> overrides): about the KLD of the
  # KV budget 6 + act budget 6 rows, to see how many bits the one sensitivity order needs for it.
  case "$model" in stories260K) target="${TARGET_stories260K:-0.16}" ;; salty260K) target="${TARGET_salty260K:-0.12}" ;; *) target="${TARGET_aidreams260K:-0.05}" ;; esac
  echo
  echo "### $model (ctx $ctx, chunks $chunks (0: all), GPTQ $nsamples calibration windows, planner on $plan_windows)"
  echo
  echo "| setting | bits/weight | bits/cached elt (codes) | bits/activation (mean over layers) | integer PPL | simulated PPL | integer KLD | K/V(/A) bits per layer (planner) |"
  echo "|---|---|---|---|---|---|---|---|"
  for entry in "${configs[@]}"; do
    entry="${entry//@TARGET@/$target}"
    name="${entry%%|*}"; flags="${entry#*|}"
    # shellcheck disable=SC2086
    nice -n 19 "$q" "$file" $flags -o "$tmp/m.safetensors" --calib "$calib" --seqlen "$ctx" --nsamples "$nsamples" \
      --plan-windows "$plan_windows" --eval-ids "$ids" --ctx "$ctx" --chunks "$chunks" \
      --progress none --quiet --json "$tmp/r.json" >/dev/null 2>&1
    python3 - "$tmp/r.json" "$name" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
e, s = r["eval"], r["sizes"]
plan = r.get("precision_plan")
# Activations planned: an activation budget, or a target from 4-bit activations (their sensitivities measured).
act_planned = bool(plan and (plan.get("budget_act_bits", 0) > 0 or any(l.get("a_sensitivity", 0) != 0 for l in plan["layers"])))
layers = " ".join(f"K{l['k_bits']}V{l['v_bits']}" + (f"A{l['a_bits']}" if act_planned else "") for l in plan["layers"]) if plan else ""
a_bits = plan["act_bits_per_element"] if act_planned else r["config"]["activations"]["bits"]
print(f"| {sys.argv[2]} | {s['bits_per_weight']:.3f} | {s.get('kv_bits_per_element', 16):.2f} | {a_bits:.2f} | {e['packed']['ppl']:.4f} | "
      f"{e['quantized']['ppl']:.4f} | {e['packed']['kld_mean']:.4f} | {layers} |")
PY
  done
done
