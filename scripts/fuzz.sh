#!/usr/bin/env bash
# Builds the libFuzzer targets of native/core/fuzz (clang, AddressSanitizer and UBSan) into
# build-fuzz/ and runs each for a given time on a scratch copy of its seed corpus.
#
#   scripts/fuzz.sh 600                          every target, 10 minutes each, one at a time
#   scripts/fuzz.sh --seconds 10 --jobs 2        every target, 10 s each, two at once (CI)
#   scripts/fuzz.sh --seconds 60 safetensors     some targets
#   scripts/fuzz.sh --build-only
#
# Prints per target the inputs run, the coverage reached and the crashes found; a crash, leak,
# timeout (10 s for one input) or out-of-memory (an allocation or RSS over 2 GB) leaves its input in
# build-fuzz/artifacts/<target>/ and makes the script exit 1. Replay one with
# `build-fuzz/<target>_fuzzer <file>`. build-fuzz/results.tsv holds the same table for tools.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'fuzz: %s\n' "$*" >&2; }

out=build-fuzz
rm -f "$out/results.tsv"  # a run that fails early must not leave an earlier run's results behind

ALL_TARGETS=(safetensors torch_pickle json_config image)
seconds=60
jobs=1
build_only=0
targets=()
while (($#)); do
  case $1 in
    --seconds) seconds=${2:?--seconds needs a number}; shift 2 ;;
    --jobs) jobs=${2:?--jobs needs a number}; shift 2 ;;
    --build-only) build_only=1; shift ;;
    -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    [0-9]*) seconds=$1; shift ;;
    *)
      if [[ " ${ALL_TARGETS[*]} " != *" $1 "* ]]; then
        say "unknown target '$1' (targets: ${ALL_TARGETS[*]})"
        exit 2
      fi
      targets+=("$1")
      shift
      ;;
  esac
done
((${#targets[@]})) || targets=("${ALL_TARGETS[@]}")
[[ $seconds =~ ^[0-9]+$ && $seconds -gt 0 ]] || { say "--seconds must be a positive integer"; exit 2; }
[[ $jobs =~ ^[0-9]+$ && $jobs -gt 0 ]] || { say "--jobs must be a positive integer"; exit 2; }

compiler=${FUZZ_CXX:-clang++-14}
command -v "$compiler" >/dev/null || { say "$compiler not found (Debian: apt-get install clang-14 libclang-rt-14-dev)"; exit 1; }

# Configure once (Ninja when there is one), then build only the targets asked for.
if [[ ! -f $out/CMakeCache.txt ]]; then
  generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  mkdir -p "$out"
  cmake -S native/core/fuzz -B "$out" "${generator[@]}" -DCMAKE_CXX_COMPILER="$compiler" -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$out/configure.log" 2>&1 ||
    { cat "$out/configure.log" >&2; say "configuring $out failed"; rm -f "$out/CMakeCache.txt"; exit 1; }
fi
build_targets=()
for target in "${targets[@]}"; do build_targets+=("${target}_fuzzer"); done
started=$SECONDS
if ! cmake --build "$out" --parallel "$(nproc 2>/dev/null || echo 2)" --target "${build_targets[@]}" >"$out/build.log" 2>&1; then
  cat "$out/build.log" >&2
  say "the build failed (log above, also in $out/build.log)"
  exit 1
fi
say "built ${build_targets[*]} in $((SECONDS - started)) s"
((build_only)) && exit 0

# One campaign: a fresh copy of the seeds (the tree's corpus never changes), the target's
# dictionary, and limits that make a slow or greedy input a finding rather than a stall.
# Artifacts of earlier runs stay; the stamp tells this run's apart.
run_target() {
  local target=$1 corpus=$out/corpus/$1 artifacts=$out/artifacts/$1
  rm -rf "$corpus"
  mkdir -p "$corpus" "$artifacts"
  touch "$out/.started-$target"
  cp native/core/fuzz/corpus/"$target"/* "$corpus"/
  local options=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048
    -print_final_stats=1 -artifact_prefix="$artifacts"/)
  [[ -f native/core/fuzz/$target.dict ]] && options+=(-dict=native/core/fuzz/"$target".dict)
  # One OpenMP thread: the readers compute nothing, and the cores belong to the other campaigns.
  OMP_NUM_THREADS=1 "$out/${target}_fuzzer" "${options[@]}" "$corpus" >"$out/$target.log" 2>&1
}

# Runs, coverage and features from the log's final lines; the new artifacts are the findings.
summarise() {
  local target=$1 status=$2 log=$out/$1.log
  local runs cov ft found count result
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  found=$(find "$out/artifacts/$target" -type f -newer "$out/.started-$target" | sort | tr '\n' ' ')
  found=${found% }
  count=$(wc -w <<<"$found")
  if [[ $status -eq 0 && $count -eq 0 ]]; then result=ok; else result=FAILED; fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$result" "$seconds" "${runs:-?}" "${cov:-?}" "${ft:-?}" "$count" "$found" \
    >>"$out/results.tsv"
  printf 'fuzz: %-12s %5ss  runs %-9s cov %-6s ft %-7s crashes %s%s\n' "$target" "$seconds" "${runs:-?}" "${cov:-?}" "${ft:-?}" \
    "$count" "${found:+  ($found)}"
  if [[ $result != ok ]]; then
    say "$target failed (exit $status); the end of its log ($log):"
    tail -n 40 "$log" >&2
    return 1
  fi
}

: >"$out/results.tsv"
declare -A target_of=()  # pid -> target
failed=0
collect() {  # waits for one campaign to end and reports it
  local pid status=0
  wait -n -p pid "${!target_of[@]}" || status=$?
  summarise "${target_of[$pid]}" "$status" || failed=1
  unset "target_of[$pid]"
}
for target in "${targets[@]}"; do
  while ((${#target_of[@]} >= jobs)); do collect; done
  say "running $target for $seconds s"
  run_target "$target" &
  target_of[$!]=$target
done
while ((${#target_of[@]})); do collect; done
exit "$failed"
