#!/usr/bin/env bash
# Regenerate the receipts and reports in docs/crossval/ (run from the repository root, in the dev virtualenv).
# The llama.cpp runs need llama-cpp-python (the crossval extra); the bitnet.cpp runs read the outputs recorded
# from bitnet.cpp in tests/fixtures/ (set BITNET_CPP_DIR to run your own build instead).
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
OUT=docs/crossval
MODELS=$(mktemp -d)
trap 'rm -rf "$MODELS"' EXIT
run() { local name=$1; shift; "$PY" -m bitnet_crossval "$@" -t 2 -q --json "$OUT/$name.json" --report "$OUT/$name.html" || true; }

for q in f32 f16 tq1_0 tq2_0; do
  "$PY" tools/make_synthetic_model.py --shape tiny --quant $q --arch bitnet -o "$MODELS/tiny-$q.gguf" > /dev/null
  run "tiny-$q.llama-cpp" -m "$MODELS/tiny-$q.gguf" --reference llama-cpp
done
for m in b158-a-i2s b158-a-f32; do
  run "$m.bitnet-cpp" -m tests/fixtures/$m.gguf --reference bitnet-cpp --numerics ggml
done
# deliberately wrong engines: both must FAIL
run "b158-a-i2s.bitnet-cpp.FAULT-no-act-quant" -m tests/fixtures/b158-a-i2s.gguf --reference bitnet-cpp --numerics ggml --fault no-act-quant
run "b158-a-i2s.bitnet-cpp.WRONG-fast-numerics" -m tests/fixtures/b158-a-i2s.gguf --reference bitnet-cpp --numerics fast
