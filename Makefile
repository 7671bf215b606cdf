# Everything a fresh machine needs: `make train` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# make train CORPUS=iemocap ROOT=/data/IEMOCAP_full_release  trains on a real corpus instead.
CORPUS ?= demo
ROOT   ?=
WORK   ?= demo
HOURS  ?= 0.4
EPOCHS ?= 6
JOBS   ?= -1

.PHONY: setup test bench train clean help

help:
	@echo "make train   set up, build the demo corpus store, cross-validate (CORPUS=iemocap ROOT=... for a real corpus)"
	@echo "make test    set up and run the test suite"
	@echo "make bench   set up and run the benchmarks"

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch is pinned to the CPU wheel on this machine's disk; install it first, exactly.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/bench_build.py

clean:
	rm -rf $(VENV) $(WORK) runs
