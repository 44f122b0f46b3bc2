# Two commands do all the setup: `make demo` and `make test`. Both create .venv/ on first use
# and reuse it afterwards; it is rebuilt only when pyproject.toml or constraints.txt change.
# `make docs` builds the documentation site (mkdocs.yml, docs/) strictly into site/, the same way.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test docs lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[openvino,test,docs]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/featx demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

# Fails on any warning: a broken link, a command without its page, a public name without its entry.
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --clean --site-dir site

lint: $(STAMP)
	$(VENV)/bin/python -m pip install --quiet ruff
	$(VENV)/bin/ruff check featx tests

clean:
	rm -rf cache/* data/digits site
