#!/usr/bin/env bash
# The GPU checks in one run, from the repository root:
#   OUT=/some/folder bash benchmarks/run_cuda.sh
# 1. the machine and the versions; 2. the CUDA tests (tests/nn/test_cuda.py: numbers against the
# dense reference, no host sync, bf16 autocast, compiled eval, allocator peaks); 3. the benchmark
# (python -m benchmarks cuda, float32 and bf16 autocast, results in $OUT/cuda.json);
# 4. if time is left, the whole-model graph-break checks of tests/nn/test_compile.py (on the
# CPU) under this torch.
# Every part runs even if an earlier one fails; the exit status is that of the first failure.
# The log goes to $OUT/log.txt (and the pytest JUnit reports next to it). Knobs (environment):
# BENCH_ARGS (extra arguments of the cuda mode, e.g. "--budget-s 100"), TEST_TIMEOUT_S,
# BENCH_TIMEOUT_S, COMPILE_TESTS ("0" skips part 4), DEADLINE_S (no part 4 after it).
set -o pipefail
OUT=${OUT:?set OUT to the output folder}
mkdir -p "$OUT"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python}
START=$SECONDS
STATUS=0
LOG="$OUT/log.txt"
: > "$LOG"

part() {  # part NAME COMMAND...: run, log, remember the first failure
    local name=$1 rc
    shift
    echo "=== $name ($((SECONDS - START)) s): $*" | tee -a "$LOG"
    "$@" 2>&1 | tee -a "$LOG"
    rc=$?
    echo "=== $name: exit $rc after $((SECONDS - START)) s" | tee -a "$LOG"
    if [ "$rc" -ne 0 ] && [ "$STATUS" -eq 0 ]; then STATUS=$rc; fi
}

part machine nvidia-smi -L
part versions "$PY" -c "import sys, torch, torch_geometric, torch_geometric.typing as t
print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda,
      '| device', torch.cuda.get_device_name() if torch.cuda.is_available() else None,
      '| torch_geometric', torch_geometric.__version__, '| torch_scatter', t.WITH_TORCH_SCATTER)
import pyg_mefl; print('pyg_mefl imports')"
part cuda-tests timeout "${TEST_TIMEOUT_S:-150}" "$PY" -m pytest -q -rs -p no:cacheprovider \
    tests/nn/test_cuda.py --junitxml="$OUT/junit_cuda.xml"
# shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
part benchmark timeout "${BENCH_TIMEOUT_S:-200}" "$PY" -m benchmarks cuda \
    --out "$OUT/cuda.json" ${BENCH_ARGS:-}
if [ "${COMPILE_TESTS:-1}" != 0 ] && [ $((SECONDS - START)) -lt "${DEADLINE_S:-200}" ]; then
    part compile-tests timeout 60 "$PY" -m pytest -q -p no:cacheprovider \
        tests/nn/test_compile.py -k "test_mefl_one_graph_and_compiled_equals_eager" -x \
        --junitxml="$OUT/junit_compile.xml"
fi
echo "=== done after $((SECONDS - START)) s, status $STATUS" | tee -a "$LOG"
exit "$STATUS"
