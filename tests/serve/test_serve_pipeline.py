"""The pipeline API and `puyu chat` on the real SmolLM2-135M-Instruct."""

import numpy as np
import pytest

from puyu_jax import GenerationConfig, pipeline
from oracle import DenseGenerator
from puyu_jax.serve.chat import chat_loop

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def pipe():
    return pipeline("smollm2", max_num_seqs=8, kv_cache_memory_gb=0.1)


def test_chat_answer_matches_simple_generate(pipe):
    r = pipe.chat(QUESTION, GenerationConfig(max_new_tokens=24))
    assert "Paris" in r.text
    ids = pipe.encode_chat(QUESTION)
    ref = DenseGenerator(_model(pipe)).generate([ids], 24, stop_ids=pipe.tokenizer.eos_ids)[0]
    assert r.token_ids == ref
    assert r.input_token_len == len(ids) and r.generate_token_len == len(ref)


def _model(pipe):
    from flax import nnx

    return nnx.merge(pipe.engine.runner.graphdef, pipe.engine.runner.state)


def test_stream_deltas_join_to_the_full_text_and_stop_strings_cut(pipe):
    gen = GenerationConfig(max_new_tokens=24)
    full = pipe.chat(QUESTION, gen)
    parts = list(pipe.chat(QUESTION, gen, stream=True))
    assert "".join(p.text for p in parts) == full.text
    assert parts[-1].finish_reason == full.finish_reason
    cut = pipe.chat(QUESTION, GenerationConfig(max_new_tokens=24, stop=("Paris",)))
    assert cut.finish_reason == "stop" and "Paris" not in cut.text
    assert full.text.startswith(cut.text)
    streamed = "".join(p.text for p in pipe.chat(QUESTION, GenerationConfig(max_new_tokens=24, stop=("Paris",)), stream=True))
    assert streamed == cut.text


def test_batch_of_prompts_and_n_choices():
    """Batches and n > 1 through the pipeline (a tiny random model with the real tokenizer: the
    content does not matter here, and it keeps the 30-layer model's compiled shapes few)."""
    from serve_api_helpers import smollm2_tokenizer, tiny_model_config

    from puyu_jax.models.params import init_model

    model = init_model(tiny_model_config(), 0)
    tiny = pipeline(model, smollm2_tokenizer(), num_blocks=128, block_size=16)
    outs = tiny(["The sky is", "One, two, three,"], GenerationConfig(max_new_tokens=6, ignore_eos=True))
    assert len(outs) == 2 and all(o.generate_token_len == 6 for o in outs)
    r = tiny("Once upon a time", GenerationConfig(max_new_tokens=8, temperature=1.0, seed=3, n=3, ignore_eos=True))
    assert len(r.choices) == 3 and len({tuple(c.token_ids) for c in r.choices}) > 1
    assert r.choices[0].text == tiny.tokenizer.decode(r.choices[0].token_ids, skip_special=True)
    from puyu_jax.serve.runner import score_logprobs

    ids = tiny.tokenizer.encode("Once upon a time there was a model")
    np.testing.assert_allclose(tiny.score(ids), score_logprobs(model, ids), atol=1e-5)
    assert tiny.engine.stats().num_blocks_used == 0


def test_chat_loop_keeps_history(pipe):
    lines = iter(["What is the capital of France?", "And of Italy?", "/exit"])
    out = []
    messages = chat_loop(pipe, GenerationConfig(max_new_tokens=16), read=lambda: next(lines), write=out.append)
    assert [m["role"] for m in messages] == ["user", "assistant"] * 2
    assert "Paris" in messages[1]["content"] and "Rome" in messages[3]["content"]  # the follow-up needs the history
    lines = iter(["Hello", "/reset", "/exit"])
    assert chat_loop(pipe, GenerationConfig(max_new_tokens=4), read=lambda: next(lines), write=out.append) == []
    assert "(history cleared)" in "".join(out)
