# The course's commands. `make lab` and `make test` set everything up by themselves.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
export PYTHONHASHSEED := 0

.PHONY: setup lab test unit notebooks course bench export mvtec visa student lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

lab: setup            ## open JupyterLab on the repository (notebooks/ and student/ both reachable), in notebooks/
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks

test: setup           ## lint, unit tests, then every notebook through nbval in the smoke profile
	$(VENV)/bin/ruff check anomaly_utils tests notebooks
	$(PY) -m pytest -q tests
	AD_PROFILE=smoke $(PY) -m pytest -q --nbval-lax --nbval-current-env -p no:cacheprovider notebooks/

unit: setup
	$(PY) -m pytest -q tests

course: setup         ## run every notebook in this machine's profile, keep outputs, update results/ and README
	$(PY) -m anomaly_utils.course

bench: setup          ## time fit and inference of every method, write results/bench.json
	$(PY) -m anomaly_utils.bench

export: setup         ## copy #@save cells of the notebooks into anomaly_utils/lessons/
	$(PY) -m anomaly_utils.export

mvtec: setup          ## download MVTec AD (needs internet; CATEGORIES="bottle carpet" for some) into data/downloads/
	$(PY) -m anomaly_utils.download mvtec $(if $(CATEGORIES),--categories $(CATEGORIES))

visa: setup           ## download VisA (needs internet, about 1.9 GB; CATEGORIES="candle pcb1" unpacks some) into data/downloads/
	$(PY) -m anomaly_utils.download visa $(if $(CATEGORIES),--categories $(CATEGORIES))

student: setup        ## write student/ (git-ignored): every notebook without its answers; never overwrites your edits
	$(PY) -m anomaly_utils.student

lint: setup
	$(VENV)/bin/ruff check anomaly_utils tests notebooks

clean:
	rm -rf data/cache .pytest_cache
