# The two commands a user needs: `make demo` and `make test`. Both set up .venv first, from requirements.lock.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install lock demo test test-fast docs lint clean

install: $(STAMP)

# Exact versions from requirements.lock (the environment the tests passed on); carspotter itself editable, no deps.
$(STAMP): pyproject.toml requirements.lock src/carspotter/serve/web/package-lock.json
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	@# onnxruntime-web for `carspotter app` (npm ci of the pinned lock file, once); without npm the app tests skip
	$(BIN)/carspotter app-setup || echo "warning: no onnxruntime-web (needs npm); \`carspotter app\` will not work"
	@touch $(STAMP)

# Refresh requirements.lock: resolve pyproject.toml (with [test]) afresh, newest versions allowed; installs nothing.
lock:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --dry-run --ignore-installed --report .lock-report.json '.[test,docs]'
	$(BIN)/python -c "import json; r = json.load(open('.lock-report.json')); \
	pins = sorted(f\"{i['metadata']['name']}=={i['metadata']['version']}\" for i in r['install'] \
	              if i['metadata']['name'].lower() != 'carspotter'); \
	head = ['# Exact versions of everything make install puts in .venv: the dependencies of carspotter[test].', \
	        '# Written by make lock (resolves pyproject.toml afresh); commit it with the change that needed it.']; \
	open('requirements.lock', 'w').write('\n'.join(head + pins) + '\n')"
	@rm -f .lock-report.json
	@echo "requirements.lock: $$(grep -vc '^#' requirements.lock) packages"

demo: install
	$(BIN)/carspotter demo --workdir demo_out

# Two test workers by default (most tests train on one thread; CI has two cores), each test file in one worker.
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# The edit-test loop: everything but the tests marked slow (longer training, DDP, kill/resume, the notebook, the
# browser, ExecuTorch lowering, real photos). `make test` (what CI runs) still runs them all.
test-fast: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow and not gpu"

# The documentation site (docs/, mkdocs.yml) into site/: open site/index.html, no server or network needed.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

lint: install
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf demo_out .pytest_cache site
