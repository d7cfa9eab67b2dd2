#!/usr/bin/env bash
# Prepares the peers that bench/inference.mjs compares visiontorch with:
#   1. PyTorch and torchvision for the PyTorch eager peer and the ONNX exports (Debian's
#      python3-torch and python3-torchvision, installed with apt-get when missing);
#   2. onnxruntime-node in bench/.peers/ (git-ignored), outside the package's dependencies;
#   3. ONNX exports of the benchmarked architectures in bench/.peers/onnx/.
# Idempotent: each step is skipped when its result is already in place.
#
# VISIONTORCH_BENCH_PYTHON picks the python3 (default /usr/bin/python3, as bench/lib.mjs).
set -euo pipefail

bench_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
peers_dir="$bench_dir/.peers"
python="${VISIONTORCH_BENCH_PYTHON:-/usr/bin/python3}"
ort_version=1.30.0

log() { echo "setup-peers: $*"; }
fail() {
  echo "setup-peers: error: $*" >&2
  exit 1
}

# 1. PyTorch and torchvision -------------------------------------------------------------------
if ! "$python" -c 'import torch, torchvision' 2>/dev/null; then
  command -v apt-get >/dev/null ||
    fail "$python cannot import torch and torchvision, and there is no apt-get to install python3-torch and python3-torchvision; install them or set VISIONTORCH_BENCH_PYTHON to a python3 that has them"
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || fail "installing python3-torch and python3-torchvision needs root (or sudo)"
    sudo=(sudo)
  fi
  log "installing python3-torch and python3-torchvision with apt-get"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq python3-torch python3-torchvision
  "$python" -c 'import torch, torchvision' ||
    fail "$python still cannot import torch and torchvision after apt-get; is $python Debian's python3?"
fi
log "PyTorch $("$python" -c 'import torch, torchvision; print(torch.__version__, "torchvision", torchvision.__version__)')"

# 2. onnxruntime-node --------------------------------------------------------------------------
ort_dir="$peers_dir/node_modules/onnxruntime-node"
installed_version="$(node -p "require(process.argv[1]).version" "$ort_dir/package.json" 2>/dev/null || true)"
if [ "$installed_version" != "$ort_version" ]; then
  log "installing onnxruntime-node@$ort_version into bench/.peers"
  mkdir -p "$peers_dir"
  # --ignore-scripts: its install script downloads the CUDA and TensorRT binaries, which are out
  # of reach and not needed; the CPU binaries for linux x64 are inside the package.
  npm install --prefix "$peers_dir" --no-save --ignore-scripts --no-audit --no-fund --loglevel=error "onnxruntime-node@$ort_version"
fi
# Loading it proves that the native binary for this platform is there.
node -e "require(process.argv[1])" "$ort_dir" ||
  fail "onnxruntime-node@$ort_version in $ort_dir does not load on $(uname -s) $(uname -m) (the package ships CPU binaries for linux x64 and arm64, macOS arm64 and Windows x64)"
log "onnxruntime-node $ort_version"

# 3. ONNX exports ------------------------------------------------------------------------------
# The exporter skips models whose file is newer than the model code and configs. PyTorch's
# tracer warnings (shapes read as Python numbers) are expected: batch stays dynamic, as the
# exporter's input and output axes declare.
"$python" -W ignore "$bench_dir/peers/export_onnx.py" "$peers_dir/onnx"
