#!/usr/bin/env bash
# The GPU checks, for a machine with CUDA: the tests marked gpu (the bundled model on CUDA against the CPU,
# AMP training), then bench/gpu.py's training and transcription speed, GPU beside the same machine's CPU.
#
#   scripts/gpu_check.sh SAMPLE_MANIFEST [RESULTS_DIR]
#
# SAMPLE_MANIFEST: a slice of the training corpus (a few hundred utterances). Logs and gpu.json go to
# RESULTS_DIR (default: runs/gpu-check). Set PYTHON to choose the interpreter (default: python3).
set -uo pipefail
sample=${1:?usage: scripts/gpu_check.sh SAMPLE_MANIFEST [RESULTS_DIR]}
results=${2:-runs/gpu-check}
py=${PYTHON:-python3}
mkdir -p "$results"
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
$py -m pytest -q -m gpu -p no:cacheprovider tests/test_cuda.py tests/test_train.py 2>&1 | tee "$results/tests.log"
tests=${PIPESTATUS[0]}
$py -m bench.gpu "$sample" --json "$results/gpu.json" 2>&1 | tee "$results/bench.log"
bench=${PIPESTATUS[0]}
echo "tests exit $tests, bench exit $bench"
exit $(( tests || bench ))
