#!/usr/bin/env bash
# The main job, end to end on the default model: stories260K from the shared data folder, or,
# when that is missing, a small synthetic model generated on the spot.
# Today the job loads the checkpoint, validates every tensor and prints its summary; the
# rotation, quantization, packing and report steps join this same command as they land.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)" >/dev/null
bin=build/release/tools
data="${QUAROT_DATA:-../shared/data}"
model="$data/stories260K/stories260K.bin"
tokenizer="$data/stories260K/tok512.bin"
if [ -f "$model" ]; then
  "$bin/quarot-inspect" "$model" --tokenizer "$tokenizer"
else
  echo "run-default: $model not found; generating a small synthetic model instead" >&2
  "$bin/quarot-synth" --preset tiny --seed 0 -o build/default-model
  "$bin/quarot-inspect" build/default-model
fi
