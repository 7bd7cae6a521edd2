#!/usr/bin/env bash
# Runs tests/hostile_inputs.sh with every tool wrapped in /usr/bin/time, and prints the
# bench/RESULTS.md row for issue 20: cases tried / handled, exit codes, the slowest case and the
# largest peak RSS of a refused input (the suite itself checks exit code, one line, time, nothing written).
# Usage: bench/hostile_inputs_summary.sh TOOL_DIR   (e.g. build/release/tools or build/asan/tools)
set -uo pipefail
cd "$(dirname "$0")/.."
tools=$(realpath "${1:?usage: bench/hostile_inputs_summary.sh TOOL_DIR}")
wrap=$(mktemp -d "${TMPDIR:-/tmp}/quarot-hostile-wrap-XXXXXX")
trap 'rm -rf "$wrap"' EXIT
for t in "$tools"/quarot-*; do
  [[ -x $t && -f $t ]] || continue
  n=$(basename "$t")
  printf '#!/bin/bash\nexec /usr/bin/time -a -o %q -f "%%M %%e %%x %s" %q "$@"\n' "$wrap/mem.log" "$n" "$t" >"$wrap/$n"
  chmod +x "$wrap/$n"
done
start=$(date +%s%N)
bash tests/hostile_inputs.sh "$wrap" >"$wrap/suite.log" 2>&1; rc=$?
wall=$(( ($(date +%s%N) - start) / 1000000 ))
tried=$(grep -cE '^(ok|FAIL) ' "$wrap/suite.log")
handled=$(grep -c '^ok ' "$wrap/suite.log")
grep '^FAIL' -A5 "$wrap/suite.log"
# refused runs only (exit 1 or 2): the suite's own helper runs (synth, rotate) exit 0
read -r kb s1 tool < <(grep -E '^[0-9]+ [0-9.]+ [12] ' "$wrap/mem.log" | sort -n | tail -1 | awk '{print $1, $2, $4}')
slowest=$(grep -oE '^ok +[^ ]+ \([0-9]+ ms' "$wrap/suite.log" | sed -E 's/^ok +([^ ]+) \(([0-9]+) ms/\2 \1/' | sort -n | tail -1)
echo "| tried | handled | exit 1 / exit 2 | slowest case | largest peak RSS | whole suite |"
echo "|---|---|---|---|---|---|"
echo "| $tried | $handled | $(grep -c 'exit 1)' "$wrap/suite.log") / $(grep -c 'exit 2)' "$wrap/suite.log") |" \
  "${slowest%% *} ms (${slowest#* }) | $(awk -v k="$kb" 'BEGIN { printf "%.1f MiB", k / 1024 }') ($tool) | $((wall / 1000)).$(((wall % 1000) / 100)) s |"
exit "$rc"
