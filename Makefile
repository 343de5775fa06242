# Two commands on a fresh machine:  `make demo` (install + run the main job on a generated sample archive)
# and `make test` (install + the whole test suite, as CI runs it).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install models demo test test-fast test-avx2 benchmark gpu-pack clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: the pinned 2.13.0 (CPU build where a local wheel exists, the CUDA build on GPU machines);
	# resolving it together with the rest can pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# the real-trained default weights: downloaded, checked and converted once into the model cache (~/.cache/posepipe);
# later runs only check that the cached checkpoints are current
models: $(STAMP)
	$(BIN)/posepipe models fetch

install: $(STAMP) models

demo: install
	$(BIN)/posepipe synth sample --out sample
	$(BIN)/posepipe run --input sample --output output

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# the tests of numbers (nets against LiteRT, decoding, grouping) with every runtime held to AVX2, as on the AVX2
# machines, on an AVX-512 one (infra/cpu/as-avx2: needs CPUID faulting)
AVX2_TESTS := tests/test_blazepose.py tests/test_topdown.py tests/test_heatmaps.py tests/test_grouping.py \
	tests/test_preprocess.py tests/test_inference.py tests/test_model.py
test-avx2: install
	infra/cpu/as-avx2 $(BIN)/python -m pytest -q $(AVX2_TESTS)

benchmark: install
	$(BIN)/posepipe benchmark

# what infra/gpu/check.sh needs on a GPU machine without network: the default checkpoint, in .gpu/ (ignored)
gpu-pack: models
	mkdir -p .gpu/models
	cp "$$($(BIN)/python -c 'from pipeline.models.blazepose.weights import cached_checkpoint; print(cached_checkpoint("blazepose-heavy"))')" .gpu/models/

clean:
	rm -rf output sample .pytest_cache
