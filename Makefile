# Fedship: `make demo` and `make test` work on a fresh machine (they create .venv).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE ?= 100
export PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE ?= 50
export PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL ?= 1
export PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE ?= 200
export PREFECT_SERVER_SERVICES_EVENT_PERSISTER_READ_BATCH_SIZE ?= 50

.PHONY: install demo test lint bench clean

# pip's own chatter goes to .venv/install.log; on failure its tail is printed.
$(STAMP): pyproject.toml constraints.txt
	@echo "setting up $(VENV) (pip log: $(VENV)/install.log)"
	$(PYTHON) -m venv $(VENV)
	@{ $(BIN)/pip install --upgrade pip && \
	   $(BIN)/pip install -c constraints.txt -e '.[test]'; } > $(VENV)/install.log 2>&1 \
	  || { tail -40 $(VENV)/install.log; echo "set-up failed: see $(VENV)/install.log"; exit 1; }
	@touch $(STAMP)
	@echo "$(VENV) ready"

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fedship train --preset digits
	$(BIN)/fedship versions --limit 12
	$(BIN)/fedship rollback --reason "demo: roll production back one promotion"
	$(BIN)/fedship audit --limit 6

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check fl tasks flows deployments tests benchmarks
	$(BIN)/mypy fl tasks flows deployments

bench: $(STAMP)
	$(BIN)/python benchmarks/pipeline_vs_raw.py

clean:
	rm -rf $(VENV) .fedship .pytest_cache
