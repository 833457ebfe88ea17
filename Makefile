# Two commands: `make run` (the app) and `make test` (the suite). Both create .venv if missing and
# install what is needed; a second call installs nothing and prints nothing extra.
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
RUN_OK := $(VENV)/.setup-run
DEV_OK := $(VENV)/.setup-dev

.PHONY: run test setup setup-dev browser bench-official clean-venv

run: setup
	$(VENV)/bin/streamlit run app/main.py

test: setup-dev browser
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n 2 --dist loadfile tests

setup: $(RUN_OK)
setup-dev: $(DEV_OK)

$(RUN_OK): requirements.txt requirements-embedded.txt pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	@$(PIP) install -r requirements.txt
	@$(PIP) install --no-deps -r requirements-embedded.txt
	@$(PIP) install --no-deps -e .
	@touch $@

$(DEV_OK): $(RUN_OK) requirements-dev.txt
	@$(PIP) install -r requirements-dev.txt
	@touch $@

# The browser test drives Debian's chromium (playwright cannot download a browser here).
browser:
	@test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null \
		|| echo "chromium could not be installed: the browser test will be skipped"

bench-official: setup
	$(PY) -m ppcore bench --seeds none --official ../shared/reference/official_cpu_run \
		--methods dense,pp,fullbatch,wanda-sp,flap --ratios 0.2,0.4 --official-out bench/results/official.json

clean-venv:
	rm -rf $(VENV)
