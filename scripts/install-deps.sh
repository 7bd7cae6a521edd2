#!/usr/bin/env bash
# Installs the Debian packages quarot needs, only those missing; silent when all are present.
set -euo pipefail
packages=(
  cmake ninja-build g++ pkg-config
  libeigen3-dev nlohmann-json3-dev libcli11-dev libspdlog-dev zlib1g-dev
  libgtest-dev libbenchmark-dev libsentencepiece-dev
  libtomlplusplus-dev                       # TOML configs and batch plans (quarot-quantize --config, quarot-batch)
  libpcre2-dev libutf8proc-dev              # tokenizer.json: Unicode split regexes and NFC normalization
  clang libclang-rt-14-dev libomp-14-dev   # libFuzzer targets (tests/fuzz), OpenMP under clang
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "install-deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
