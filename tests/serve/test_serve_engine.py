"""The continuous-batching engine against the simple dense-cache generator, on a tiny random model."""

import dataclasses

import jax
import numpy as np
import pytest

from oracle import DenseGenerator
from puyu_jax.models.config import ModelConfig
from puyu_jax.models.params import init_model
from puyu_jax.serve.config import EngineConfig, GenerationConfig
from puyu_jax.serve.engine import LLMEngine
from puyu_jax.serve.errors import PromptTooLongError, QueueFullError
from puyu_jax.serve.runner import ModelRunner

CFG = ModelConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=8, num_kv_heads=4,
                  head_dim=16, max_position_embeddings=512)


@pytest.fixture(scope="module")
def model():
    return init_model(CFG, seed=3)


@pytest.fixture(scope="module")
def reference(model):
    gen = DenseGenerator(model)
    cache = {}

    def run(prompt, n):
        key = (tuple(prompt), n)
        if key not in cache:
            cache[key] = gen.generate([prompt], n)[0]
        return cache[key]

    return run


def _prompts(seed: int, count: int, shared_prefix: int = 24, length_seed: int | None = None):
    rng = np.random.default_rng(seed)
    lengths = np.random.default_rng(seed if length_seed is None else length_seed).integers(2, 70, count)
    prefix = list(rng.integers(1, CFG.vocab_size, shared_prefix))
    out = []
    for i in range(count):
        n = int(lengths[i])
        tail = list(rng.integers(1, CFG.vocab_size, n))
        out.append([int(t) for t in (prefix + tail if i % 2 else tail)])
    return out


def test_staggered_requests_match_simple_generate(model, reference):
    """16+ requests of different lengths arriving at different steps, through a pool small
    enough to force preemptions, with prefix-cache hits and chunked prefill: every greedy
    output equals the request run alone through the simple generator."""
    prompts = _prompts(0, 18)
    rng = np.random.default_rng(1)
    new_tokens = [int(n) for n in rng.integers(20, 48, len(prompts))]
    arrive_at = sorted(int(s) for s in rng.integers(0, 16, len(prompts)))
    eng = LLMEngine(model, None, EngineConfig(block_size=8, num_blocks=64, max_num_seqs=12, max_num_batched_tokens=32))
    outputs, step, pending = {}, 0, list(range(len(prompts)))
    while pending or eng.has_unfinished_requests():
        while pending and arrive_at[pending[0]] <= step:
            i = pending.pop(0)
            eng.add_request(str(i), prompts[i], GenerationConfig(max_new_tokens=new_tokens[i], ignore_eos=True))
        for out in eng.step():
            if out.finished:
                outputs[int(out.request_id)] = out.outputs[0].token_ids
        step += 1
        assert step < 2000
    stats = eng.stats()
    assert stats.num_preemptions > 0, "the pool was meant to run out"
    assert stats.prefix_cache_hits > 0
    assert stats.num_blocks_used == 0
    for i, p in enumerate(prompts):
        assert outputs[i] == reference(p, new_tokens[i]), f"request {i} (prompt {len(p)} tokens)"


def test_steady_state_never_recompiles(model):
    """Traffic of the same shape (lengths, arrival) but new contents and sampling settings
    reuses the compiled steps: shapes are bucketed and sampling knobs are data."""
    eng = LLMEngine(model, None, EngineConfig(block_size=8, num_blocks=64, max_num_seqs=8, max_num_batched_tokens=64))
    gen = GenerationConfig(max_new_tokens=10, temperature=0.7, top_p=0.9, seed=1, ignore_eos=True)
    eng.generate(_prompts(2, 12, shared_prefix=0), gen)  # warm-up over this traffic's buckets
    before = ModelRunner.compiled_programs()
    gens = [dataclasses.replace(gen, temperature=0.3 + i / 10, top_k=i, seed=i) for i in range(12)]
    eng.generate(_prompts(3, 12, shared_prefix=0, length_seed=2), gens)
    assert ModelRunner.compiled_programs() == before


def test_n_choices_share_the_prompt_and_match_seeded_singles(model):
    prompt = _prompts(4, 1)[0] + list(range(1, 30))
    eng = LLMEngine(model, None, EngineConfig(block_size=8, num_blocks=64))
    gen = GenerationConfig(max_new_tokens=8, temperature=1.0, seed=11, ignore_eos=True)
    (multi,) = eng.generate([prompt], dataclasses.replace(gen, n=3))
    singles = eng.generate([prompt] * 3, [dataclasses.replace(gen, seed=11 + i) for i in range(3)])
    assert [c.token_ids for c in multi.outputs] == [s.outputs[0].token_ids for s in singles]
    assert len({tuple(c.token_ids) for c in multi.outputs}) > 1
    assert eng.stats().num_blocks_used == 0


def test_seeded_sampling_is_independent_of_the_batch(model):
    prompts = _prompts(5, 6)
    gen = GenerationConfig(max_new_tokens=12, temperature=0.9, top_p=0.9, top_k=50, min_p=0.02, seed=7, ignore_eos=True)
    eng = LLMEngine(model, None, EngineConfig(block_size=8, num_blocks=64))
    alone = eng.generate([prompts[0]], gen)[0].outputs[0].token_ids
    crowd = eng.generate(prompts, [gen] + [dataclasses.replace(gen, seed=100 + i) for i in range(5)])
    assert crowd[0].outputs[0].token_ids == alone


def test_logprobs_match_the_dense_model(model):
    prompt = _prompts(6, 1)[0]
    eng = LLMEngine(model, None, EngineConfig(block_size=8, num_blocks=64))
    (out,) = eng.generate([prompt], GenerationConfig(max_new_tokens=6, logprobs=True, top_logprobs=5, ignore_eos=True))
    c = out.outputs[0]
    tokens = np.asarray([prompt + c.token_ids], np.int32)
    logits, _ = model(jax.numpy.asarray(tokens))
    lp = np.asarray(jax.nn.log_softmax(logits[0], axis=-1))
    for k, item in enumerate(c.logprobs):
        row = lp[len(prompt) - 1 + k]
        assert item.token_id == c.token_ids[k]
        np.testing.assert_allclose(item.logprob, row[item.token_id], atol=2e-4)
        assert [t for t, _, _ in item.top] == list(np.argsort(-row)[:5])


def test_penalties_change_greedy_choice_as_defined(model):
    """Greedy with a strong repetition penalty never repeats a token when another is
    available; the first token equals the penalised argmax computed in numpy."""
    prompt = _prompts(7, 1)[0][:20]
    eng = LLMEngine(model, None, EngineConfig(block_size=8, num_blocks=64))
    (out,) = eng.generate([prompt], GenerationConfig(max_new_tokens=6, repetition_penalty=1.8, frequency_penalty=0.5,
                                                      ignore_eos=True))
    logits, _ = model(jax.numpy.asarray([prompt], dtype=np.int32))
    row = np.asarray(logits[0, -1], np.float64)
    seen = np.zeros_like(row, bool)
    seen[prompt] = True
    row = np.where(seen, np.where(row > 0, row / 1.8, row * 1.8), row)
    assert out.outputs[0].token_ids[0] == int(np.argmax(row))


def test_quantized_kv_scores_close_to_float(model):
    prompt = _prompts(8, 1)[0] + _prompts(9, 1)[0]
    from puyu_jax.serve.runner import score_logprobs

    fp = score_logprobs(model, prompt)
    q8 = score_logprobs(model, prompt, kv_dtype="int8")
    q4 = score_logprobs(model, prompt, kv_dtype="int4")
    logits, _ = model(jax.numpy.asarray([prompt], dtype=np.int32))
    dense = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits[0, :-1], -1)), np.asarray(prompt[1:])[:, None], -1)[:, 0]
    np.testing.assert_allclose(fp, dense, atol=1e-4)
    np.testing.assert_allclose(q8, fp, atol=0.05)
    assert abs(q8.mean() - fp.mean()) < 0.01 * abs(fp.mean())
    np.testing.assert_allclose(q4, fp, atol=0.25)
    assert abs(q4.mean() - fp.mean()) < 0.02 * abs(fp.mean())
    assert 0 < np.abs(q8 - fp).max() < np.abs(q4 - fp).max()  # 4 bits lose more than 8


@pytest.mark.parametrize("kv", ["int8", "int4"])
def test_quantized_kv_pages_hold_what_prefill_rounded(model, kv):
    """Decode reads every key and value back from the pages; scoring the same tokens in one prefill
    uses them rounded in place. Equal log-probs mean the pages hold exactly the rounded values (int4:
    both nibbles of every byte, written by prompt prefill and by single decode steps), in a pool
    whose blocks earlier requests left dirty."""
    from puyu_jax.serve.runner import score_logprobs

    eng = LLMEngine(model, None, EngineConfig(block_size=8, num_blocks=24, kv_dtype=kv))
    eng.generate(_prompts(13, 4), GenerationConfig(max_new_tokens=10, ignore_eos=True))
    prompt = _prompts(14, 1, length_seed=1)[0]
    (out,) = eng.generate([prompt], GenerationConfig(max_new_tokens=12, logprobs=True, ignore_eos=True))
    c = out.outputs[0]
    want = score_logprobs(model, prompt + c.token_ids, kv_dtype=kv, block_size=8)[len(prompt) - 1:]
    np.testing.assert_allclose([item.logprob for item in c.logprobs], want, atol=2e-4)


def test_tensor_parallel_serving_matches_one_device():
    assert len(jax.devices()) >= 8
    model = init_model(dataclasses.replace(CFG, num_heads=16, num_kv_heads=8, intermediate_size=256), seed=4)
    prompts = _prompts(10, 5)
    gen = GenerationConfig(max_new_tokens=8, ignore_eos=True)
    one = LLMEngine(model, None, EngineConfig(block_size=8, num_blocks=64)).generate(prompts, gen)
    eng = LLMEngine(model, None, EngineConfig(block_size=8, num_blocks=64, tp=8))
    assert eng.runner.kv.k[0].sharding.spec[0] == "tensor"  # the pool is split over kv heads
    q = eng.runner.state["layers"][0]["attn"]["q_proj"]["kernel"]
    assert q.sharding.spec[1] == "tensor"  # and the heads of every projection
    outs = eng.generate(prompts, gen)
    for a, b in zip(one, outs):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids


def test_bad_requests_are_refused_cleanly(model):
    eng = LLMEngine(model, None, EngineConfig(block_size=8, num_blocks=16, max_waiting=2))
    with pytest.raises(PromptTooLongError):
        eng.add_request("long", list(range(1, 500)), GenerationConfig(max_new_tokens=64))
    with pytest.raises(PromptTooLongError):  # fits the context but not the pool
        eng.add_request("pool", list(range(1, 100)), GenerationConfig(max_new_tokens=64))
    with pytest.raises(ValueError, match="empty"):
        eng.add_request("empty", [], GenerationConfig())
    with pytest.raises(ValueError, match="token ids"):
        eng.add_request("oov", [1, 99999], GenerationConfig())
    eng.add_request("a", [1, 2, 3], GenerationConfig(max_new_tokens=4))
    eng.add_request("b", [1, 2, 3], GenerationConfig(max_new_tokens=4))
    with pytest.raises(QueueFullError):
        eng.add_request("c", [1, 2, 3], GenerationConfig(max_new_tokens=4))
    eng.abort_request("a")
    outs = {o.request_id: o for _ in range(20) for o in eng.step()}
    assert outs["a"].outputs[0].finish_reason == "abort"
    assert outs["b"].finished
    assert eng.stats().num_blocks_used == 0
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig(top_p=0.0)


@pytest.mark.parametrize("kv", ["auto", "int4"])
def test_tensor_parallel_with_the_pallas_kernel(kv):
    """Under TP the Pallas decode kernel runs per device inside shard_map (interpret mode on CPU)."""
    model = init_model(dataclasses.replace(CFG, num_heads=8, num_kv_heads=4, num_layers=1), seed=5)
    prompts = _prompts(12, 2)
    gen = GenerationConfig(max_new_tokens=3, ignore_eos=True)
    ref = LLMEngine(model, None, EngineConfig(block_size=16, num_blocks=32, kv_dtype=kv)).generate(prompts, gen)
    eng = LLMEngine(model, None, EngineConfig(block_size=16, num_blocks=32, tp=4, attention_impl="pallas", kv_dtype=kv))
    outs = eng.generate(prompts, gen)
    assert [o.outputs[0].token_ids for o in outs] == [o.outputs[0].token_ids for o in ref]


def test_stop_token_ids_end_the_choice(model):
    prompt = _prompts(13, 1)[0]
    eng = LLMEngine(model, None, EngineConfig(block_size=8, num_blocks=64))
    (free,) = eng.generate([prompt], GenerationConfig(max_new_tokens=12, ignore_eos=True))
    ids = free.outputs[0].token_ids
    stop = ids[4]
    (cut,) = eng.generate([prompt], GenerationConfig(max_new_tokens=12, stop_token_ids=(stop,), ignore_eos=True))
    c = cut.outputs[0]
    assert c.token_ids == ids[: ids.index(stop) + 1] and c.finish_reason == "stop" and c.stop_reason == stop


def test_several_decode_steps_per_dispatch_equal_one_at_a_time(model, reference):
    """Decoding up to 8 steps per dispatch on the device (sampling, penalties, stop ids and
    length limits inside the loop) gives exactly the tokens and log-probs of one step per
    round; greedy equals the dense oracle and a stop id ends the choice where it appears."""
    prompts = _prompts(12, 4)
    chunked = LLMEngine(model, None, EngineConfig(block_size=8, num_blocks=96, max_num_seqs=4, decode_steps=8))
    single = LLMEngine(model, None, EngineConfig(block_size=8, num_blocks=96, max_num_seqs=4, decode_steps=1))
    greedy = chunked.generate(prompts, GenerationConfig(max_new_tokens=21, ignore_eos=True))
    for p, o in zip(prompts, greedy):
        assert o.outputs[0].token_ids == reference(p, 21)
    stop = greedy[1].outputs[0].token_ids[5]
    (cut,) = chunked.generate([prompts[1]], GenerationConfig(max_new_tokens=21, stop_token_ids=(stop,)))
    want = greedy[1].outputs[0].token_ids
    assert cut.outputs[0].token_ids == want[: want.index(stop) + 1] and cut.outputs[0].finish_reason == "stop"
    gen = GenerationConfig(max_new_tokens=19, temperature=0.8, top_p=0.9, seed=5, repetition_penalty=1.3,
                           frequency_penalty=0.4, ignore_eos=True, logprobs=True, top_logprobs=3)
    for a, b in zip(chunked.generate(prompts, gen), single.generate(prompts, gen)):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        np.testing.assert_allclose([x.logprob for x in a.outputs[0].logprobs],
                                   [x.logprob for x in b.outputs[0].logprobs], atol=1e-5)
    assert chunked.stats().num_blocks_used == 0


def test_sliding_window_prefill_in_chunks_matches_the_oracle():
    """Prefill attends to the cached prefix pages plus the chunk's own keys; with a sliding
    window and prompts split over several steps the tokens still equal the dense oracle's."""
    model = init_model(dataclasses.replace(CFG, sliding_window=12), seed=5)
    prompts = _prompts(13, 3)
    eng = LLMEngine(model, None, EngineConfig(block_size=8, num_blocks=64, max_num_batched_tokens=16))
    outs = eng.generate(prompts, GenerationConfig(max_new_tokens=10, ignore_eos=True))
    oracle = DenseGenerator(model)
    for p, o in zip(prompts, outs):
        assert o.outputs[0].token_ids == oracle.generate([p], 10)[0]
