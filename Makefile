# Two entry points a fresh clone needs: `make train` and `make test`.
# Both create .venv on first use. torch is installed first with an exact pin so
# pip takes the CPU build on disk instead of pulling several GB of CUDA wheels.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PIN ?= torch==2.13.0

.PHONY: setup train test lint clean cluster-check

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_PIN)"
	$(BIN)/python -m pip install -q -e ".[dev,bench]"
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/fleet train $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# A real `ray up` of cluster/loopback.yaml on this machine (three Ray nodes on 127.0.0.1-3 over SSH), a
# training, an evaluation and a stopped job, `ray down`; each step timed (docs/cluster.md). Needs root and
# openssh-server + rsync (Debian's packages).
cluster-check: $(STAMP)
	$(BIN)/python -m cluster.cluster_check $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) runs .pytest_cache
