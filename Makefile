# Two commands do all set-up from a fresh clone with only Python 3.11+ and make:
#   make demo   create .venv, install, deliver a dose against the built-in simulator, show the result
#   make test   create .venv, install, run the linter and the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-slow lint bench fuzz soak faults clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,visa,plot,bench]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/iontodrive demo

test: $(STAMP)
	$(BIN)/ruff check iontodrive firmware_sim tests bench examples tools
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check iontodrive firmware_sim tests bench examples tools
	$(BIN)/ruff format --check iontodrive firmware_sim tests bench examples tools

bench: $(STAMP)
	$(BIN)/python bench/codec.py
	$(BIN)/python bench/sim_speed.py
	$(BIN)/python bench/rtt.py
	$(BIN)/python bench/telemetry.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .hypothesis
