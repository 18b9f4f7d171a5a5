# The two commands of the README:
#   make book   install, execute every notebook on the tiny profile (and the optimizer sweep), build the site
#   make test   install, run the unit tests and the notebook tests
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PROFILE ?= tiny
# extra runner options, e.g. make book ARGS="--params-file params/gpu-internvl2-2b.yaml"
ARGS    ?=

.PHONY: install gpu-env swift browser book notebooks sweep site test lint lock clean
install:
	@PYTHON=$(PYTHON) bash tools/install.sh $(VENV)

# On a CUDA machine: the same environment, and LMDeploy in its own environment
# (.venv-serve) with the Jupyter kernel `book-serve` that the runner uses for notebooks 02 and 07.
gpu-env:
	@PYTHON=$(PYTHON) bash tools/install.sh --gpu $(VENV)

book: notebooks sweep site

# ms-swift's own environment for notebook 12 (.venv-swift; requirements/swift.txt says why it is separate)
swift:
	@PYTHON=$(PYTHON) bash tools/install-swift.sh

notebooks: install swift
	$(PY) -m helpers.book run --profile $(PROFILE) $(ARGS)

# the course's optimizer experiment (the cold-joke notes), overlaid by notebook 05 on the site
SWEEP ?= params/sweep-lr-optimizer.yaml
sweep: install
	$(PY) -m helpers.book sweep $(SWEEP) --profile $(PROFILE)

site: install
	$(PY) -m helpers.site build

# the site's browser test drives Debian's chromium; installed when we may (root), else it is skipped locally
browser:
	-@bash tools/install-browser.sh

# ruff's rules and formatter (pyproject.toml [tool.ruff]) over the code and the notebooks' code cells
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# ms-swift's environment (pip, from PyPI) and the browser (apt) install side by side: both mostly wait on downloads
test: install
	@$(MAKE) --no-print-directory -j2 swift browser
	@$(MAKE) --no-print-directory lint
	$(PY) -m pytest

lock:  ## refresh requirements/lock-cpu.txt from a fresh install of the pins
	rm -rf /tmp/book-lock-venv && $(PYTHON) -m venv /tmp/book-lock-venv
	/tmp/book-lock-venv/bin/pip install -q torch torchvision -c requirements/base.txt
	/tmp/book-lock-venv/bin/pip install -q --no-deps -r requirements/no-deps.txt
	/tmp/book-lock-venv/bin/pip install -q -r requirements/base.txt
	/tmp/book-lock-venv/bin/pip freeze --exclude-editable | sort -f > requirements/lock-cpu.txt

clean:
	rm -rf _build
