# Set-up and entry points. Every target installs what it needs first, so on a fresh machine
# `make bench` (the main job) and `make test` are the only two commands.
PYTHON ?= python3
# The torch / triton pins used when none is installed (an installed one is never replaced).
TORCH_PIN ?= torch==2.13.0
TRITON_PIN ?= triton==3.6.0

.PHONY: install lint test bench
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "$(TORCH_PIN)"
	@$(PYTHON) -c "import triton" 2>/dev/null || $(PYTHON) -m pip install -q "$(TRITON_PIN)"
	@$(PYTHON) -m pip install -q -e ".[test]"
	@# host models (Protenix ...) without their pins, which would replace torch: see the file
	@$(PYTHON) -m pip install -q --no-deps -r requirements-hosts.txt

# ruff (lint, import order, format) on the package, tests and scripts; mypy on the package, the host
# adapters' contract included (pyproject.toml's [tool.ruff] / [tool.mypy])
lint: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy

test: lint
	$(PYTHON) -m pytest -q tests

# the structure benchmark at its small CPU default (tiny Protenix, 1CRN + 1UBQ, original / exact /
# lowrank); results in bench_out/structure (a second run keeps them: make bench ARGS=overwrite=true
# replaces them). The op benchmark: $(PYTHON) scripts/bench_attention.py
bench: install
	$(PYTHON) scripts/benchmark.py $(ARGS)
