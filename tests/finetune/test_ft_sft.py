"""Chat template, assistant-only loss mask, packing, loader, preview; the step's loss_mask."""

import jax
import jax.numpy as jnp
import numpy as np

from puyu_jax.assets import IDENTITY_SFT
from puyu_jax.finetune.formats import load_dataset
from puyu_jax.finetune.sft import build_sft_data, encode_sample, pack_examples, preview, resolve_template, sft_loader
from puyu_jax.train.step import token_loss

from conftest import DATA



def test_only_assistant_turns_are_trained_multi_turn(smollm2_tok):
    tok = smollm2_tok
    s = load_dataset(DATA / "oasst.jsonl").samples[1]
    ids, mask = encode_sample(tok, resolve_template(tok), s)
    assert tok.decode(ids).startswith("<|im_start|>system\n")  # SmolLM2's own template adds its system turn
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    a1, a2 = s.messages[1]["content"], s.messages[3]["content"]
    assert trained == f"{a1}<|im_end|>{a2}<|im_end|>"
    assert "assistant\n" not in trained and s.messages[0]["content"] not in trained


def test_tool_call_tokens_are_trained_with_internlm2_markup(smollm2_tok):
    s = load_dataset(DATA / "moss.jsonl").samples[1]
    ids, mask = encode_sample(smollm2_tok, "internlm2", s)
    marked = preview(smollm2_tok, ids, mask)
    assert '⟦<think>' in marked and '<|action_start|><|plugin|>\n{"name": "Calculate"' in marked
    assert "⟦1234 * 5678 = 7006652.<|im_end|>⟧" in marked
    assert "⟦7006652" not in marked  # the tool result is context, not a target


def test_tool_calls_as_text_for_templates_without_tool_markup(smollm2_tok):
    s = load_dataset(DATA / "glaive_toolcall_en.json").samples[0]
    ids, mask = encode_sample(smollm2_tok, resolve_template(smollm2_tok), s)
    marked = preview(smollm2_tok, ids, mask)
    assert '⟦<tool_call>\n{"name": "search_recipes"' in marked and "<tools>" in marked


def test_packing_segments_positions_and_mask():
    ex = [(np.arange(1, 6), np.array([0, 0, 1, 1, 1])), (np.arange(10, 14), np.array([0, 1, 1, 0])),
          (np.arange(20, 27), np.ones(7, int))]
    rows = pack_examples(ex, 10, pad_id=0)
    assert rows.shape == (2, 4, 10)
    np.testing.assert_array_equal(rows[0, 1], [1] * 5 + [2] * 4 + [0])
    np.testing.assert_array_equal(rows[0, 2], [0, 1, 2, 3, 4, 0, 1, 2, 3, 0])
    np.testing.assert_array_equal(rows[0, 3], [0, 0, 1, 1, 1, 0, 1, 1, 0, 0])
    assert (rows[1, 1] == [1] * 7 + [0] * 3).all() and pack_examples(ex, 10, 0, pack=False).shape[0] == 3


def test_build_data_and_loader(smollm2_tok):
    rows, st = build_sft_data(str(IDENTITY_SFT), smollm2_tok, resolve_template(smollm2_tok), seq_len=256)
    assert st.samples == 40 and st.bad_records == 0 and st.sequences == len(rows) < 40 and st.fill > 0.5
    it = sft_loader(rows, 4, seed=0)
    b = next(it)
    assert set(b) == {"tokens", "segment_ids", "positions", "loss_mask"} and b["tokens"].shape == (4, 256)
    assert (b["loss_mask"][b["segment_ids"] == 0] == 0).all()


def test_loss_mask_selects_targets_and_absent_mask_is_unchanged():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 6, 11)), jnp.float32)

    class Fixed:
        def __call__(self, tokens, positions=None, segment_ids=None, remat=None):
            return logits, None

    tokens = jnp.asarray(rng.integers(0, 11, (2, 6)))
    seg = jnp.asarray([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1]])
    batch = {"tokens": tokens, "segment_ids": seg, "positions": jnp.zeros_like(seg)}
    mask = jnp.asarray([[0, 1, 1, 0, 1, 1], [0, 0, 1, 1, 0, 1]])
    l_all, _, n_all = token_loss(Fixed(), batch, 0.0, None)
    l_m, _, n_m = token_loss(Fixed(), {**batch, "loss_mask": mask}, 0.0, None)
    nll = jax.nn.logsumexp(logits[:, :-1], -1) - jnp.take_along_axis(logits[:, :-1], tokens[:, 1:, None], -1)[..., 0]
    valid = np.array([[1, 1, 0, 1, 0], [1, 1, 1, 1, 1]])
    np.testing.assert_allclose(l_all, np.sum(nll * valid), rtol=1e-6)
    w = valid * np.asarray(mask[:, 1:])
    assert int(n_all) == valid.sum() == 8 and int(n_m) == w.sum() == 6
    np.testing.assert_allclose(l_m, np.sum(nll * w), rtol=1e-6)
