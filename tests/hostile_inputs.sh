#!/usr/bin/env bash
# Hostile-input suite (issue 20): one generated file per class of bad input that the readers
# refuse, each run through the tool a user would run it with. Every case must exit 1 or 2 with
# exactly one line on stderr that names the file, within 2 s (QUAROT_HOSTILE_SECONDS), and write
# nothing (its folder's listing is unchanged; a FIFO or device output stays what it was).
# Usage: tests/hostile_inputs.sh TOOL_DIR   (registered with ctest in tests/CMakeLists.txt)
set -uo pipefail
tools="${1:?usage: hostile_inputs.sh TOOL_DIR}"
limit="${QUAROT_HOSTILE_SECONDS:-2}"
work=$(mktemp -d "${TMPDIR:-/tmp}/quarot-hostile-XXXXXX")
trap 'rm -rf "$work"' EXIT
failures=0 cases=0

# Little-endian u64 as raw bytes.
le64() {
  local v=$1 i out=""
  for i in 0 1 2 3 4 5 6 7; do out+=$(printf '\\x%02x' $(((v >> (8 * i)) & 255))); done
  printf "$out"
}
# A safetensors file from a header text (in a file) and N zero data bytes.
safetensors() {  # header_file data_bytes out
  { le64 "$(stat -c %s "$1")"; cat "$1"; head -c "$2" /dev/zero; } >"$3"
}
nested() { awk -v n="$1" -v o="$2" -v c="$3" 'BEGIN { s = ""; for (i = 0; i < n; i++) printf "%s", o; for (i = 0; i < n; i++) printf "%s", c }'; }

# A valid tiny model to damage: config.json + model.safetensors (F32).
"$tools/quarot-synth" --preset tiny -o "$work/base" --dtype f32 >/dev/null 2>&1 || { echo "hostile: quarot-synth failed"; exit 1; }
ids="$work/ok.ids"; echo "1 2 3 4 5 6 7 8" >"$ids"
config_with() {  # dir sed-expression: a copy of the base model with config.json edited
  mkdir -p "$1" && cp "$work/base/model.safetensors" "$1/" && sed -E "$2" "$work/base/config.json" >"$1/config.json"
}

# run NAME FILE-THE-ERROR-NAMES DIR-THAT-MUST-NOT-CHANGE TOOL ARGS...
run() {
  local name=$1 file=$2 dir=$3 tool=$4; shift 4
  cases=$((cases + 1))
  local before after err="$work/$name.err" t0 t1 rc
  before=$(ls -lAR --time-style=+%s.%N "$dir" 2>/dev/null)
  t0=$(date +%s%N)
  timeout 60 "$tools/$tool" "$@" >/dev/null 2>"$err"; rc=$?
  t1=$(date +%s%N)
  after=$(ls -lAR --time-style=+%s.%N "$dir" 2>/dev/null)
  local ms=$(((t1 - t0) / 1000000)) lines problem=""
  lines=$(wc -l <"$err")
  [[ $rc == 1 || $rc == 2 ]] || problem+=" exit $rc;"
  [[ $lines == 1 ]] || problem+=" $lines lines on stderr;"
  grep -qF -- "$file" "$err" || problem+=" the message does not name $file;"
  ((ms <= limit * 1000)) || problem+=" took ${ms} ms;"
  [[ "$before" == "$after" ]] || problem+=" $dir changed;"
  if [[ -n $problem ]]; then
    failures=$((failures + 1))
    echo "FAIL $name:$problem"; sed 's/^/    stderr: /' "$err" | head -5
  else
    echo "ok   $name (${ms} ms, exit $rc): $(cut -c1-160 "$err")"
  fi
}

# 1. config.json nested a million deep (stack overflow in the JSON library before).
d="$work/deep-config"; mkdir -p "$d"; cp "$work/base/model.safetensors" "$d/"
{ printf '{"model_type": "llama", "hidden_size": '; nested 1000000 '[' ']'; printf '}'; } >"$d/config.json"
run deep-config "$d/config.json" "$d" quarot-inspect "$d"

# 2. safetensors header nested deep.
d="$work/deep-header"; mkdir -p "$d"; cp "$work/base/config.json" "$d/"
{ printf '{"__metadata__": {"a": '; nested 200000 '[' ']'; printf '}}'; } >"$work/deep.hdr"
safetensors "$work/deep.hdr" 0 "$d/model.safetensors"
run deep-safetensors-header "$d/model.safetensors" "$d" quarot-inspect "$d"

# 3. A header with 200,000 tensors (quadratic duplicate check before: minutes).
d="$work/many-tensors"; mkdir -p "$d"; cp "$work/base/config.json" "$d/"
awk 'BEGIN { printf "{"; for (i = 0; i < 200000; i++) printf "%s\"t%d\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[%d,%d]}", (i ? "," : ""), i, i, i + 1; printf "}" }' >"$work/many.hdr"
safetensors "$work/many.hdr" 200000 "$d/model.safetensors"
run 200k-tensors "$d" "$d" quarot-inspect "$d"

# 4-5. Layer counts far beyond the file (minutes, then a message without the file, before).
config_with "$work/layers-3m" 's/"num_hidden_layers": [0-9]+/"num_hidden_layers": 3000000/'
run layers-3000000 "$work/layers-3m/config.json" "$work/layers-3m" quarot-inspect "$work/layers-3m"
config_with "$work/layers-max" 's/"num_hidden_layers": [0-9]+/"num_hidden_layers": 2147483647/'
run layers-2^31-1 "$work/layers-max/config.json" "$work/layers-max" quarot-inspect "$work/layers-max"
config_with "$work/layers-4000" 's/"num_hidden_layers": [0-9]+/"num_hidden_layers": 4000/'
run layers-4000-small-file "$work/layers-4000/config.json" "$work/layers-4000" quarot-inspect "$work/layers-4000"

# 6. num_attention_heads x head_dim past 2^31 (int overflow, UBSan, before).
config_with "$work/heads" 's/"num_attention_heads": [0-9]+/"num_attention_heads": 65536/; s/"head_dim": [0-9]+/"head_dim": 65536/; s/"num_key_value_heads": [0-9]+/"num_key_value_heads": 1/'
run heads-x-head-dim "$work/heads/config.json" "$work/heads" quarot-inspect "$work/heads"

# 7. bos/eos outside the vocabulary (2^32 + 1 wrapped to 1 before).
config_with "$work/bos" 's/"bos_token_id": [0-9]+/"bos_token_id": 4294967297/'
run bos-outside-vocab "$work/bos/config.json" "$work/bos" quarot-inspect "$work/bos"
config_with "$work/eos" 's/"eos_token_id": [0-9]+/"eos_token_id": 1000000/'
run eos-outside-vocab "$work/eos/config.json" "$work/eos" quarot-inspect "$work/eos"

# 8. A NaN weight (the last value of the file) and an Inf one (accepted silently before).
for v in nan inf; do
  d="$work/$v-weight"; mkdir -p "$d"; cp "$work/base/"* "$d/"
  size=$(stat -c %s "$d/model.safetensors")
  if [[ $v == nan ]]; then printf '\x00\x00\xc0\x7f'; else printf '\x00\x00\x80\x7f'; fi |
    dd of="$d/model.safetensors" bs=1 seek=$((size - 4)) conv=notrunc status=none
  run "$v-weight" "$d/model.safetensors" "$d" quarot-inspect "$d"
done

# 9. A llama2.c tokenizer with fewer than 259 pieces (heap overflow in byte fallback before).
d="$work/short-tok"; mkdir -p "$d"
{ printf '\x05\x00\x00\x00'; for p in '<unk>' '<s>' '</s>' a b; do printf '\x00\x00\x00\x00'; printf "\\x0${#p}\\x00\\x00\\x00"; printf '%s' "$p"; done; } >"$d/tok.bin"
printf 'a b a b\n' >"$d/text.txt"
run short-llama2c-tokenizer "$d/tok.bin" "$d" quarot-eval "$work/base" --text "$d/text.txt" --tokenizer "$d/tok.bin"

# 9b. A SentencePiece model whose piece holds a NUL byte (libsentencepiece aborted before).
printf 'Cg4KBTx1bms+FQAAAAAYAgoMCgM8cz4VAAAAABgDCg0KBgAEPC9zPhUAAAAAGAMKDAoD4paBFQAAAIAYAMAYAQoKCgFjFQAAQMAYAQ==' | base64 -d >"$d/bad.model"
run corrupt-sentencepiece-model "$d/bad.model" "$d" quarot-eval "$work/base" --text "$d/text.txt" --tokenizer "$d/bad.model"

# 10. Token ids past 2^64 and negative ones.
d="$work/ids"; mkdir -p "$d"; printf '1 2 18446744073709551617 3\n' >"$d/big.ids"; printf '1 -2 3\n' >"$d/neg.ids"
run ids-past-2^64 "$d/big.ids" "$d" quarot-eval "$work/base" --ids "$d/big.ids"
run ids-negative "$d/neg.ids" "$d" quarot-eval "$work/base" --ids "$d/neg.ids"

# 11. A batch plan nested deep (TOML) and a deep JSON one.
d="$work/plan"; mkdir -p "$d"
{ printf 'models = '; nested 100000 '[' ']'; printf '\n'; } >"$d/deep.toml"
{ printf 'a'; for ((i = 0; i < 5000; i++)); do printf '.a'; done; printf ' = 1\n'; } >"$d/dotted.toml"
{ printf '{"models": '; nested 100000 '[' ']'; printf '}'; } >"$d/deep.json"
run plan-deep-toml "$d/deep.toml" "$d" quarot-batch "$d/deep.toml" -o "$d/out"
run plan-dotted-toml "$d/dotted.toml" "$d" quarot-batch "$d/dotted.toml" -o "$d/out"
run plan-deep-json "$d/deep.json" "$d" quarot-batch "$d/deep.json" -o "$d/out"

# 12. Outputs that are not regular files: a FIFO, a folder and a symbolic link as --json (a
# device such as /dev/null was replaced by a regular file when run as root before). The
# output's own folder must not change.
d="$work/outputs"; mkdir -p "$d/folder"; mkfifo "$d/fifo"; ln -s "$work/ok.ids" "$d/link"
for target in fifo folder link; do
  run "json-onto-$target" "$d/$target" "$d" quarot-eval "$work/base" --ids "$ids" --ctx 4 --json "$d/$target"
done
# ... and onto an input (by identity: a second name for the same file).
ln "$ids" "$d/hardlink.ids"
run json-onto-input "$d/hardlink.ids" "$d" quarot-eval "$work/base" --ids "$ids" --ctx 4 --json "$d/hardlink.ids"

# 13. Packed files (same-length edits of the fuzz seed's metadata, so only the header CRC, checked last,
# caught them before; now each is refused by its field): recipe values out of range (a
# classifier at 99 bits and an unknown method were accepted before), a rotation size that is not
# the config's width, and more layers than the file holds.
seed="$(dirname "$0")/fuzz/corpus/fuzz_packed/tiny.q4.safetensors"
d="$work/packed"; mkdir -p "$d"; printf '1 2 3 4\n' >"$d/ok.ids"
for edit in 'a_bits\\":)4/${1}9' 'classifier_bits\\":)16/${1}99' 'method\\":\\")rtn/${1}awq' 'w_bits\\":)4/${1}7' \
            'r4_intermediate\\":)16/${1}99' 'num_hidden_layers\\":)1/${1}9'; do
  name="packed-${edit%%\\*}"
  perl -0777 -pe "s/($edit/" "$seed" >"$d/$name.q4.safetensors"
  run "$name" "$d/$name.q4.safetensors" "$d" quarot-eval "$d/$name.q4.safetensors" --ids "$d/ok.ids" --ctx 4
done

# 14. Batch plans whose run or model names would leave -o ("../x") or collide, and shard
# summaries for `quarot-batch merge` with missing or mistyped fields (a heap overflow before).
d="$work/batch"; mkdir -p "$d/s1" "$d/s2" "$d/s3" "$d/s4"
plan() { printf 'models = [{ name = "%s", path = "%s" }]\n[[runs]]\nname = "%s"\n[[runs]]\nname = "%s"\n' "$1" "$work/base" "$2" "$3" >"$4"; }
plan m ../escape r2 "$d/escape.toml"; plan m r1 r1 "$d/twice.toml"; plan ../m r1 r2 "$d/model.toml"; plan m .hidden r2 "$d/hidden.toml"
for p in escape twice model hidden; do run "plan-name-$p" "$d/$p.toml" "$d" quarot-batch "$d/$p.toml" -o "$d/out"; done
printf '{"rows": [{"model": "m"}]}' >"$d/s1/summary.json"
printf '{"rows": [{"index": "0", "model": "m", "run": "r", "ok": true, "failure": "", "gates": {}}]}' >"$d/s2/summary.json"
printf '{"rows": {"index": 0}}' >"$d/s3/summary.json"
printf '{"rows": [{"index": 0, "model": "m", "run": "../r", "ok": true, "failure": "", "gates": {}}]}' >"$d/s4/summary.json"
for s in s1 s2 s3 s4; do run "merge-$s" "$d/$s/summary.json" "$d" quarot-batch merge "$d/$s" -o "$d/merged"; done
# 15. Rotation state (issue 20, first-run friction 1: quantizing a rotated folder rotated it again
# and dropped its online transforms, exit 0). Rotating twice, quantizing a rotated folder with a
# second rotation or without its transforms, and a config.json marked rotated without its record.
d="$work/rotated"; mkdir -p "$d/out"
"$tools/quarot-rotate" "$work/base" -o "$d/rot" --progress none >/dev/null 2>&1 || { echo "hostile: quarot-rotate failed"; exit 1; }
run rotate-twice "$d/rot" "$d/out" quarot-rotate "$d/rot" -o "$d/out/again" --progress none
run quantize-rotated "$d/rot" "$d/out" quarot-quantize "$d/rot" -o "$d/out/q.q4.safetensors" --preset w4a4kv4 --w-method rtn -q
run quantize-rotated-no-rotate "$d/rot" "$d/out" quarot-quantize "$d/rot" -o "$d/out/q.q4.safetensors" --preset w4a4kv4 --w-method rtn --no-rotate -q
mkdir -p "$d/unrecorded" && cp "$work/base/model.safetensors" "$d/unrecorded/" &&
  sed -E 's/"model_type": "llama"/"model_type": "quarot_rotated_llama"/' "$work/base/config.json" >"$d/unrecorded/config.json"
run rotated-config-without-record "$d/unrecorded/config.json" "$d/unrecorded" quarot-inspect "$d/unrecorded"
# 16. GGUF (src/io/gguf_reader.cpp; fuzz seeds of fuzz_gguf): truncated data, a tensor count
# past the file, a vocabulary-only file, an unknown architecture.
gseed="$(dirname "$0")/fuzz/corpus/fuzz_gguf"
d="$work/gguf"; mkdir -p "$d"; printf '1 2 3 4\n' >"$d/ok.ids"
head -c 3000 "$gseed/llama-q4_0" >"$d/truncated.gguf"
{ head -c 8 "$gseed/llama-q4_0"; printf '\xff\xff\xff\xff\xff\xff\xff\x0f'; tail -c +17 "$gseed/llama-q4_0"; } >"$d/count.gguf"
cp "$gseed/vocab-only" "$d/vocab-only.gguf"
perl -0777 -pe 's/llama/gemma/' "$gseed/llama-f32" >"$d/gemma.gguf"
for name in truncated count vocab-only gemma; do
  run "gguf-$name" "$d/$name.gguf" "$d" quarot-eval "$d/$name.gguf" --ids "$d/ok.ids" --ctx 4
done

# 17. Outputs onto inputs through paths the name check missed (issue 20 item 6): a file inside
# the input model folder (-o, --json), the tokenizer, --stats-ids, a task file, an in-place
# sharded convert (it wrote shards into its input folder before refusing), and quarot-batch's
# summary onto its own plan or onto a shard being merged. Each is refused before any work.
d="$work/identity"; mkdir -p "$d/m" "$d/tok"
cp "$work/base/"* "$d/m/"; cp "$ids" "$d/tok/tok.bin"
run quantize-o-into-model-folder "$d/m/model.safetensors" "$d/m" quarot-quantize "$d/m" -o "$d/m/model.safetensors" --preset w4a4kv4-rtn -q
run quantize-json-onto-model-config "$d/m/config.json" "$d/m" quarot-quantize "$d/m" --json "$d/m/config.json" --preset w4a4kv4-rtn -q
run quantize-o-onto-tokenizer "$d/tok/tok.bin" "$d/tok" quarot-quantize "$d/m" -o "$d/tok/tok.bin" --tokenizer "$d/tok/tok.bin" --preset w4a4kv4-rtn -q
mkdir -p "$d/rot-out"; cp "$ids" "$d/rot-out/config.json"
run rotate-onto-stats-ids "$d/rot-out/config.json" "$d/rot-out" quarot-rotate "$d/m" -o "$d/rot-out" --stats-ids "$d/rot-out/config.json" --progress none
run convert-in-place-sharded "$d/m/config.json" "$d/m" quarot-convert "$d/m" -o "$d/m" --shard-size 16K --progress none
mkdir -p "$d/task"; printf '{"goal": "g", "sol1": "a", "sol2": "b"}\n' >"$d/task/t.jsonl"
run eval-task-json-onto-task-file "$d/task/t.jsonl" "$d/task" quarot-eval "$d/m" --task piqa --task-file "$d/task/t.jsonl" --tokenizer "$d/tok/tok.bin" --json "$d/task/t.jsonl"
mkdir -p "$d/b"; printf '{"models": [{"name": "m", "path": "%s"}], "runs": [{"name": "r", "preset": "w4a4kv4-rtn"}]}' "$d/m" >"$d/b/summary.json"
run batch-summary-onto-plan "$d/b/summary.json" "$d/b" quarot-batch "$d/b/summary.json" -o "$d/b"
mkdir -p "$d/s"; printf '{"rows": []}' >"$d/s/summary.json"
run batch-merge-into-shard "$d/s/summary.json" "$d/s" quarot-batch merge "$d/s" -o "$d/s"

echo "hostile_inputs: $((cases - failures)) of $cases cases handled"
exit $((failures > 0))
