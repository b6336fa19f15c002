# The two commands a user needs: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml src/carspotter/serve/web/package-lock.json
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@# onnxruntime-web for `carspotter app` (npm ci of the pinned lock file, once); without npm the app tests skip
	$(BIN)/carspotter app-setup || echo "warning: no onnxruntime-web (needs npm); \`carspotter app\` will not work"
	@touch $(STAMP)

demo: install
	$(BIN)/carspotter demo --workdir demo_out

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf demo_out .pytest_cache
