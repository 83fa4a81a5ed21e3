# The two commands of the README. Both create .venv and install the pinned project from scratch when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
TEST_WORKERS ?= 2

# No model or dataset hub here: libraries must never wait on one.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: test book publish data venv lint clean bench

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and exactly pinned: where a local CPU wheel exists this takes it, not the CUDA build
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	@touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	@# the book test drives headless Chromium (Debian's package); it fails, not skips, without it
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium) || true
	$(BIN)/ruff check ntng tests tools benchmarks
	@# two workers of one torch thread each (tests/conftest.py): the tiny models gain little from a second thread,
	@# the kernel and CLI start-ups gain all of it. A file stays on one worker: its module fixtures are built once.
	@# pytest's exit code 5 (no test collected) is a broken suite, not a pass
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no test: the suite is broken" >&2; exit 1; fi; \
	exit $$rc

data: $(STAMP)
	$(BIN)/ntng data

book: data
	@# the reference preset `cpu`: its records are committed, so this builds from them; a missing cell is run
	$(BIN)/ntng book --preset cpu

# `make book`, then the site to the gh-pages branch of the remote origin (ghp-import, with .nojekyll; never forced).
# GitHub Pages: Settings -> Pages -> Deploy from a branch -> gh-pages. Another remote: make publish REMOTE=name
REMOTE ?= origin
publish: data
	$(BIN)/ntng book --preset cpu --publish --remote $(REMOTE)

# what a run costs on this machine (benchmarks/bench.py): ~8 min on 2 cores; run it on a quiet machine
bench: data
	$(BIN)/python benchmarks/bench.py --out benchmarks/out/bench.json

lint: $(STAMP)
	$(BIN)/ruff check ntng tests tools benchmarks

clean:
	rm -rf $(VENV) _build book/_build .pytest_cache
