#!/usr/bin/env bash
# The prepared check for a lent GPU machine (issue 17), in one call: backend tests, the
# accelerator benchmark, a CPU-entry + GPU-peer pair of real nodes. Everything it writes goes
# under $OUT (the device tool brings that folder back); nothing is downloaded there.
#
#   here, once, with the registry:  bash benchmarks/device_check.sh wheels
#       (Python 3.12 wheels of what the GPU image lacks, into .whl/, ignored by git)
#   there, through the device tool: run(command="bash benchmarks/device_check.sh run",
#                                       carry=[".whl"], timeout_s=540)
#
# Each step has its own time limit so that one slow step leaves the others their time; the
# whole run stays under 7.5 minutes (150 + 120 + 180 s; the pair, issue 17's targets, before the
# accelerator benchmark, whose torch.compile figures are already in the shared H200 folder) so that the machine's start and the run
# fit in a session's 15 minutes of device time. Dry run here (no GPU, the CPU as the unit):
#   WHEEL_DIR=none UNIT=cpu PATH=.venv/bin:$PATH bash benchmarks/device_check.sh run
set -u -o pipefail
cd "$(dirname "$0")/.."

WHEELS="msgspec zeroconf ifaddr pytest-asyncio lz4 simplejpeg uvloop"
WHEEL_DIR=${WHEEL_DIR:-.whl}
UNIT=${UNIT:-cuda:0}

case "${1:-run}" in
wheels)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    # shellcheck disable=SC2086  # one argument per wheel name
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$WHEEL_DIR" $WHEELS
    ;;
run)
    OUT=${OUT:-/tmp/device-check}
    mkdir -p "$OUT"
    if ls "$WHEEL_DIR"/*.whl > /dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            "$WHEEL_DIR"/*.whl || exit 1
        export PYTHONPATH=/tmp/site:$PWD
    else
        export PYTHONPATH=$PWD
    fi
    export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
    { nvidia-smi -L; python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__,
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')"; } > "$OUT/env.txt" 2>&1
    cat "$OUT/env.txt"
    echo "== backend and unit tests"
    timeout 150 python3 -m pytest -q -p no:cacheprovider tests/zoo/test_backend.py \
        tests/zoo/test_backend_availability.py tests/zoo/test_compute_unit.py tests/zoo/test_model_slice.py \
        tests/p2pinfer/runtime/test_warmup.py 2>&1 | tee "$OUT/backend.log" | tail -15
    echo "== CPU entry + GPU peer"
    timeout 120 python3 -m benchmarks.accelerated_pair --unit "$UNIT" --out "$OUT/accelerated-pair.json" 2>&1 \
        | tee "$OUT/accelerated-pair.log" | tail -45
    echo "== accelerator benchmark"
    timeout 180 python3 -m benchmarks.accelerator --repeats 15 --out "$OUT/accelerator.json" \
        > "$OUT/accelerator.log" 2>&1
    echo "accelerator: exit $?"; tail -5 "$OUT/accelerator.log"
    ;;
*)
    echo "usage: $0 wheels|run" >&2
    exit 2
    ;;
esac
