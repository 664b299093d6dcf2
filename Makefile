# Two entry points: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint chromium bench-cpu bench-serve bench-gpu protos clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch and torchvision first, pinned: these exact releases are on the machines' disks.
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[serve,demo,dev,ray]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/inferforge demo --out demo-packages

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src

# The HTML report test renders pages in headless Chromium (Debian's package); installed here where missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q && apt-get install -y -q chromium)) || \
	  echo "warning: could not install chromium (needs root and apt); the browser test will skip, saying why"

test: $(STAMP) lint chromium
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench-cpu: $(STAMP)
	$(BIN)/python benchmarks/cpu_peers.py

bench-serve: $(STAMP)
	$(BIN)/python benchmarks/serve_bench.py --wait-quiet 5

# On a machine with a CUDA GPU: writes gpu_suite.md (the table for docs/benchmarks.md) and gpu_suite.json.
bench-gpu: $(STAMP)
	$(BIN)/python benchmarks/gpu_suite.py --out gpu-suite

# The gRPC messages (src/inferforge/serve/kserve_v2_pb2.py) from their .proto; needs the dev extra.
protos: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I src --python_out=src src/inferforge/serve/kserve_v2.proto

clean:
	rm -rf $(VENV) demo-packages gpu-suite .pytest_cache .mypy_cache .ruff_cache
