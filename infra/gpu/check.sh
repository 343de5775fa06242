#!/usr/bin/env bash
# Everything a GPU machine should measure, in one call: the CUDA tests and the GPU benchmark, the figures under one
# folder ($OUT when the device tool runs it, else gpu-results/). Needs a python3 with a CUDA torch, numpy, OpenCV,
# pyarrow, fsspec, tqdm, onnxruntime and pytest (the device image has them all) and the default checkpoint, which
# `make gpu-pack` copies into .gpu/ beside this repository (carry .gpu; no network is assumed there).
#
#   bash infra/gpu/check.sh            # e.g. device run: command "bash infra/gpu/check.sh", carry [".gpu"]
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-gpu-results}
mkdir -p "$out"
export POSEPIPE_CACHE=${POSEPIPE_CACHE:-$PWD/.gpu} PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
py=${PYTHON:-python3}
if [ ! -f "$POSEPIPE_CACHE/models/blazepose-heavy.pt" ]; then
    echo "no checkpoint at $POSEPIPE_CACHE/models/blazepose-heavy.pt: run 'make gpu-pack' and carry .gpu" >&2
    exit 2
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $py -c "import torch; print(torch.__version__)"; } \
    > "$out/machine.txt" 2>&1
# conftest.py needs the CPU suite's packages (av, moto...); the CUDA tests need none of them
timeout 300 $py -m pytest -q --noconftest -p no:cacheprovider -o addopts="" tests/test_cuda.py 2>&1 | tee "$out/cuda-tests.txt"
tests=${PIPESTATUS[0]}
timeout 420 $py -m jobs.benchmark.gpu --out "$out/benchmark" "$@" 2>&1 | tee "$out/benchmark.log"
bench=${PIPESTATUS[0]}
echo "cuda tests exit $tests, benchmark exit $bench" | tee -a "$out/machine.txt"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
