#!/usr/bin/env bash
# Fetches the prebuilt llama.cpp used as the reference client (tests/llama_cpp,
# bench/bench_llama_cpp): the npm package @node-llama-cpp/linux-x64, version pinned (llama.cpp
# "v0.5.0" build, ggml 0.25.1; libllama + libggml + one CPU backend .so per ISA level, no headers).
# Into ${QUAROT_LLAMA_CPP_DIR:-$HOME/.cache/quarot/llama.cpp-3.22.1}; the libraries land in
# package/bins/linux-x64. Idempotent; when it cannot download (offline, no npm) it says so and
# exits 0, and the tests that need it skip with a message.
set -euo pipefail
version=3.22.1
dir="${QUAROT_LLAMA_CPP_DIR:-$HOME/.cache/quarot/llama.cpp-$version}"
libs="$dir/package/bins/linux-x64"
if ls "$libs"/libllama*.so >/dev/null 2>&1; then
  echo "install-llama-cpp: already in $libs"
  exit 0
fi
if [ "$(uname -sm)" != "Linux x86_64" ]; then
  echo "install-llama-cpp: the prebuilt package is for Linux x86-64 only; llama.cpp tests will skip" >&2
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "install-llama-cpp: npm not found; llama.cpp tests will skip (apt-get install npm, then rerun)" >&2
  exit 0
fi
mkdir -p "$dir"
tmp=$(mktemp -d "$dir/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
if ! (cd "$tmp" && timeout 300 npm pack --silent "@node-llama-cpp/linux-x64@$version" >/dev/null 2>"$tmp/npm.log"); then
  echo "install-llama-cpp: could not download @node-llama-cpp/linux-x64@$version ($(tail -1 "$tmp/npm.log")); llama.cpp tests will skip" >&2
  exit 0
fi
tar -xzf "$tmp"/node-llama-cpp-linux-x64-$version.tgz -C "$tmp"
rm -rf "$dir/package"
mv "$tmp/package" "$dir/package"
echo "install-llama-cpp: installed in $libs"
