# Two commands do all the setup: `make demo` and `make test`. Both create .venv/ on first use
# and reuse it afterwards; it is rebuilt only when pyproject.toml or constraints.txt change.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[openvino,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/featx demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/python -m pip install --quiet ruff
	$(VENV)/bin/ruff check featx tests

clean:
	rm -rf cache/* data/digits
