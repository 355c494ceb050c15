# Two commands do all set-up from a fresh clone with only Python 3.11+ and make:
#   make demo   create .venv, install, deliver a dose against the built-in simulator, show the result
#   make test   create .venv, install, run the linter, the type checker and the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-slow lint typecheck bench fuzz soak faults clean sim-tools

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,visa,plot,bench,sim,browser]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/iontodrive demo

test: $(STAMP) sim-tools
	$(BIN)/ruff check iontodrive firmware_sim tests bench examples tools
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check iontodrive firmware_sim tests bench examples tools
	$(BIN)/ruff format --check iontodrive firmware_sim tests bench examples tools

# mypy --strict over iontodrive and firmware_sim ([tool.mypy] in pyproject.toml; issue 18, item 8).
typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/codec.py
	$(BIN)/python bench/sim_speed.py
	$(BIN)/python bench/rtt.py
	$(BIN)/python bench/telemetry.py

# Reliability (issue 7; docs/reliability.md). Reports go to $(REPORTS); the tables are also printed.
REPORTS    ?= $(VENV)/reports
FUZZ_TIME  ?= 60
SOAK_MIN   ?= 30
FAULT_REPS ?= 5

faults: $(STAMP)
	@mkdir -p $(REPORTS)
	$(BIN)/python bench/faults.py --reps $(FAULT_REPS) --json $(REPORTS)/faults-results.json \
		--report $(REPORTS)/faults-report.md --keep $(REPORTS)/faults-failed

fuzz: $(STAMP)
	@$(BIN)/python -c 'import atheris' 2>/dev/null || $(BIN)/pip install --quiet 'atheris>=2.3'
	@mkdir -p $(VENV)/fuzz-corpus/decoder $(VENV)/fuzz-corpus/firmware
	$(BIN)/python fuzz/fuzz_decoder.py -max_total_time=$(FUZZ_TIME) -rss_limit_mb=1024 \
		-print_final_stats=1 $(VENV)/fuzz-corpus/decoder
	$(BIN)/python fuzz/fuzz_firmware.py -max_total_time=$(FUZZ_TIME) -rss_limit_mb=1024 \
		-max_len=1024 -len_control=0 -print_final_stats=1 $(VENV)/fuzz-corpus/firmware

soak: $(STAMP)
	@mkdir -p $(REPORTS)
	$(BIN)/python bench/soak.py --minutes $(SOAK_MIN) --report $(REPORTS)/soak-report.md \
		--json $(REPORTS)/soak-results.json

# System tools the simulator's tests use (issue 19): socat (a null-modem pty pair for --serial), Chromium and
# chromedriver (the web console's browser test). Installed with apt-get where missing and possible; where
# not, those tests skip with one line saying why.
SIM_TOOLS := socat:socat chromium:chromium chromedriver:chromium-driver
sim-tools:
	@missing=""; for pair in $(SIM_TOOLS); do command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
		if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
			echo "installing$$missing"; (apt-get update -qq && apt-get install -y -qq $$missing) >/dev/null 2>&1 \
				|| echo "could not install$$missing: the tests that need them will skip"; \
		else echo "missing$$missing (no root apt-get): the tests that need them will skip"; fi; \
	fi

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .hypothesis
