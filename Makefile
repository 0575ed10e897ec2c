# vigil — the two commands a newcomer needs:
#   make demo   set up .venv and run the demo (embedded broker and Redis, generated telemetry)
#   make test   set up .venv and run the test suite (real broker and Redis)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Everything: the worker and notifier (`pip install vigil`) plus the lab, lstm, demo and test
# extras. torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: demo test bench chaos lint setup clean

$(BIN)/vigil: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[lab,lstm,demo,test]"
	@touch $@

setup: $(BIN)/vigil

demo: $(BIN)/vigil
	$(BIN)/vigil demo

test: $(BIN)/vigil
	$(BIN)/python -m pytest

# The fault suite: every fault scenario (the slow ones too), then a table of what each sent,
# expected, lost and duplicated (docs/operations.md).
chaos: $(BIN)/vigil
	$(BIN)/python -m pytest -m chaos -q

bench: $(BIN)/vigil
	$(BIN)/vigil bench

lint: $(BIN)/vigil
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache artifacts
