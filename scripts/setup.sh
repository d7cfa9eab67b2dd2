#!/usr/bin/env bash
# Everything visiontorch needs on Debian 12 with Node 20: Debian packages, npm packages, the native
# build (offline, through node-api-headers) and the TypeScript build. Idempotent: when nothing
# changed it only checks, in seconds. Run by `npm start`, and by `npm test` with --tests (which
# adds what only the tests need).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'visiontorch setup: %s\n' "$*" >&2; }

for_tests=0
for argument in "$@"; do
  case $argument in
    --tests) for_tests=1 ;;
    *) say "unknown option $argument (the one option is --tests)"; exit 2 ;;
  esac
done

# libtorch (CPU, with Gloo) and a threaded OpenBLAS for it; Gloo's headers for torch.distributed's
# process group; oneDNN's headers for the int8 kernels (its CMake package asks for OpenCL's too);
# the image codecs (JPEG, PNG, WebP, GIF); JSON; GoogleTest for the core's ctest suite;
# clang-format for the C++ format check; Fashion-MNIST for the default fine-tuning job; PyTorch
# itself (the same libtorch), the peer the distributed tests train beside (torch.distributed,
# torchrun).
DEB_PACKAGES=(
  cmake make g++ pkg-config
  libtorch-dev libgloo-dev libopenblas0-pthread libdnnl-dev ocl-icd-opencl-dev
  libjpeg62-turbo-dev libpng-dev libwebp-dev libgif-dev
  nlohmann-json3-dev libgtest-dev clang-format
  dataset-fashion-mnist
  python3-torch
)
# For the tests only: clang and its sanitizer and libFuzzer runtimes, which build the fuzz targets
# of native/core/fuzz for their short runs (scripts/fuzz.sh).
TEST_DEB_PACKAGES=(clang-14 libclang-rt-14-dev)
if ((for_tests)); then DEB_PACKAGES+=("${TEST_DEB_PACKAGES[@]}"); fi

missing=()
for package in "${DEB_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    as_root=()
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    as_root=(sudo)
  else
    say "these Debian packages are missing: ${missing[*]}"
    say "installing them needs root: run 'sudo apt-get install ${missing[*]}' (or this command as root), then try again."
    exit 1
  fi
  say "installing Debian packages: ${missing[*]}"
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm packages, reinstalled only when package-lock.json changed since the last install.
lock_hash=$(sha256sum package-lock.json | cut -d' ' -f1)
stamp=node_modules/.visiontorch-lock-hash
if [[ ! -f $stamp || $(cat "$stamp") != "$lock_hash" ]]; then
  say "installing npm packages"
  # The package's own install step would build the addon; this script builds it below.
  VISIONTORCH_SKIP_INSTALL_BUILD=1 npm ci --no-audit --no-fund --loglevel=error
  echo "$lock_hash" >"$stamp"
fi

# Native addon and the core's tests; make does nothing when no source changed.
jobs=$(nproc 2>/dev/null || echo 2)
# A configure step that failed leaves a cache without build files: start that one afresh.
if [[ -f build/CMakeCache.txt && ! -f build/build.ninja && ! -f build/Makefile ]]; then
  rm -f build/CMakeCache.txt
fi
build_started=$SECONDS
if ! npx --no-install cmake-js build --parallel "$jobs" --log-level error >build.log 2>&1; then
  cat build.log >&2
  say "the native build failed (log above, also in build.log)"
  exit 1
fi
if ((SECONDS - build_started > 10)); then say "native build: $((SECONDS - build_started)) s"; fi

npx --no-install tsc -p tsconfig.json
