# timm-snnet: `make demo`, `make test`, `make bench`, `make reproduce`
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint reproduce clean timm-tests serve-bench

BASE := $(VENV)/.installed-base

# the package and what it needs to run (make demo)
$(BASE): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e . $(TORCH)
	touch $(BASE)

# plus the test extras and timm's own model tests (make test, make bench)
$(STAMP): $(BASE)
	$(BIN)/pip install -q -e ".[test]" $(TORCH)
	$(MAKE) timm-tests
	touch $(STAMP)

# timm's generic model tests (tests/test_models.py) ship in its sdist, not its wheel
TIMM_TESTS := $(VENV)/timm-tests
timm-tests:
	rm -rf $(TIMM_TESTS) && mkdir -p $(TIMM_TESTS)
	$(BIN)/pip download -q --no-deps --no-binary :all: -d $(TIMM_TESTS) \
		"timm==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("timm"))')"
	tar xzf $(TIMM_TESTS)/timm-*.tar.gz -C $(TIMM_TESTS) --strip-components=2 --wildcards '*/tests/test_models.py'
	rm $(TIMM_TESTS)/timm-*.tar.gz

demo: $(BASE)
	HF_HUB_OFFLINE=1 $(BIN)/python examples/demo.py

# two pytest-xdist workers (each test single-threaded, as tests/conftest.py sets torch), then the tests marked serial
# alone (several processes, Ray Serve, time and memory bounds)
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n 2 --dist worksteal -m "not serial" tests
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m serial tests

# the suite without the tests marked slow (full-size models, torchrun and Ray Serve runs, CLI subprocesses, timm's
# test_models): every module still runs, in under 4 minutes
test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow" tests

lint: $(STAMP)
	$(BIN)/ruff check timm_snnet tests examples benchmarks hub

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.run $(if $(QUICK),--quick,) $(if $(ONLY),--only $(ONLY),)

# `timm-snnet serve-bench` on the Fashion-MNIST SN-Net: every anchor, best-fixed and the load-adaptive server on Ray
# Serve, Poisson load ramping up and down (127.0.0.1 only; ~5 min; QUICK=1: ~2 min) -> benchmarks/results/serve.*
# (the full-size DeiT run on a production-shaped trace: docs/serving.md)
serve-bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.serve $(if $(QUICK),--quick,)

FMNIST_DIR := /usr/share/datasets/fashion-mnist

$(FMNIST_DIR):
	apt-get install -y dataset-fashion-mnist || (apt-get update && apt-get install -y dataset-fashion-mnist)

# the paper's FLOPs-accuracy curve on Fashion-MNIST (66 min of CPU, 67 min wall, one thread; QUICK=1: about 3 min)
reproduce: $(STAMP) | $(FMNIST_DIR)
	HF_HUB_OFFLINE=1 $(BIN)/python examples/fashion_mnist/reproduce.py $(if $(QUICK),--quick --output out/fashion_mnist_quick,)

clean:
	rm -rf $(VENV) build *.egg-info
