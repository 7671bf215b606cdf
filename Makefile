# Everything a fresh machine needs: `make train` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# make train CORPUS=iemocap ROOT=/data/IEMOCAP_full_release  trains on a real corpus instead.
CORPUS ?= demo
ROOT   ?=
WORK   ?= demo
HOURS  ?= 0.5
EPOCHS ?=
# Every fold is trained SEEDS times: the table shows mean ± std over seeds (README).
SEEDS  ?= 3
JOBS   ?= -1
STORE  ?= $(WORK)/feats.h5
CV_ARGS ?=

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
	# egemaps: the tests build stores with --functionals egemaps (they never skip it).
	$(BIN)/pip install --quiet -e '.[test,egemaps]'
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/bench_build.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_open.py
	$(BIN)/python benchmarks/bench_build_scale.py
	$(BIN)/python benchmarks/bench_functionals.py

train: setup
ifeq ($(CORPUS),demo)
	@mkdir -p $(WORK)
	@test -f $(WORK)/corpus/.complete || { \
	  $(BIN)/serprep demo-corpus --out $(WORK)/corpus --hours $(HOURS) --seed 0 --overwrite && touch $(WORK)/corpus/.complete; }
	$(BIN)/serprep build iemocap --root $(WORK)/corpus --out $(STORE) --augment default --balance --jobs $(JOBS) --overwrite
else
	@test -n "$(ROOT)" || { echo "error: CORPUS=$(CORPUS) needs ROOT=/path/to/the/corpus" >&2; exit 2; }
	@mkdir -p $(WORK)
	$(BIN)/serprep build $(CORPUS) --root $(ROOT) --out $(STORE) --augment default --balance --jobs $(JOBS) --overwrite
endif
	$(BIN)/serprep verify $(STORE)
	$(BIN)/serprep report $(STORE) --out $(WORK)/report
	@# A rebuilt store makes earlier runs stale: start the cross-validation afresh.
	rm -rf $(WORK)/runs
	$(BIN)/sertrain cv $(STORE) --out $(WORK)/runs --seeds $(SEEDS) $(if $(EPOCHS),--epochs $(EPOCHS)) $(CV_ARGS)
	@echo
	@echo "store:   $(STORE)  (serprep info $(STORE))"
	@echo "report:  $(WORK)/report/summary.md, class_counts.png, spectrograms.png"
	@echo "results: $(WORK)/runs/report.html (open it in a browser), table.txt, metrics.json, predictions.csv, fold_*/seed_*/best.pt"

clean:
	rm -rf $(VENV) $(WORK) runs
