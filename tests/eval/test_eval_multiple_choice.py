"""Multiple choice as lm-eval defines it: one scoring run gives acc (argmax log-likelihood),
acc_norm (argmax log-likelihood / characters of the option text) and OpenCompass' mean-NLL
choice, with every option's raw log-likelihood in the outputs. Checked per sample on a tiny
random model (with the real SmolLM2 tokenizer) against a plain forward pass and against
lm-eval's own `process_results`."""

import json

import numpy as np
import pytest
from eval_helpers import reference_logprobs

from puyu_jax.eval import evaluate, load_dataset, load_dataset_config, predict, score
from puyu_jax.eval.inferencers import decide


@pytest.fixture(scope="module")
def tiny_backend():
    from puyu_jax.eval.backends.local import LocalBackend
    from puyu_jax.models.gguf import find_smollm2_gguf
    from puyu_jax.models.params import init_model
    from puyu_jax.pretrained import load_model_config
    from puyu_jax.tokenizer import tokenizer_from_gguf

    tok = tokenizer_from_gguf(find_smollm2_gguf())
    cfg = load_model_config("tiny").replace(vocab_size=tok.vocab_size, max_position_embeddings=512)
    return LocalBackend(init_model(cfg, 0), tok, batch_size=8, name="local:tiny-mc")


def _lm_eval_task(rows: list[dict], path) -> object:
    """lm-eval's ConfigurableTask for a multiple-choice task over `rows` (question, choices, label)."""
    from lm_eval.api.task import ConfigurableTask

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ConfigurableTask(config={
        "task": "puyu_mc_check", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(path)}},
        "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{question}}",
        "doc_to_choice": "{{choices}}", "doc_to_target": "{{label}}",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]})


def _reference_ll(backend, context: str, continuation: str) -> float:
    """lm-eval's `_encode_pair` (trailing context spaces move to the continuation; the continuation's
    tokens are those of context + continuation past the context's) and one plain forward pass."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole, ctx = backend.encode(context + continuation), backend.encode(context)
    logp = reference_logprobs(backend.model, whole)
    return float(sum(logp[i - 1, whole[i]] for i in range(len(ctx), len(whole))))


@pytest.mark.parametrize("name", ["arc-e", "piqa"])
def test_choices_equal_lm_eval_definitions(name, tiny_backend, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    cfg = load_dataset_config(name, ["max_samples=12"])
    ds = load_dataset(cfg)
    preds = predict(tiny_backend, ds, progress=False)
    rows = {r["_id"]: r for r in ds.test}
    docs, lls_all, rule_differs = [], [], 0
    for p in preds:
        row = rows[p["id"]]
        texts, labels = [str(o) for o in row["options"]], list(p["logprobs"])
        lls = np.array([p["logprobs"][lab] for lab in labels])
        # raw numbers: a plain forward pass of the same (context, " " + option) pair
        for lab, text in zip(labels, texts):
            assert p["logprobs"][lab] == pytest.approx(_reference_ll(tiny_backend, p["prompt"], " " + text), abs=2e-3)
        # lm-eval's definitions, computed directly: argmax ll, argmax ll / len(option text)
        assert p["choices"]["acc"] == labels[int(np.argmax(lls))]
        assert p["choices"]["acc_norm"] == labels[int(np.argmax(lls / np.array([len(t) for t in texts])))]
        toks = np.array([p["tokens"][lab] for lab in labels])
        assert p["choices"]["acc_nll"] == labels[int(np.argmax(lls / toks))]
        rule_differs += p["choices"]["acc"] != p["choices"]["acc_norm"]
        docs.append({"question": p["prompt"], "choices": texts, "label": labels.index(p["gold"])})
        lls_all.append([(float(x), False) for x in lls])
    assert rule_differs > 0  # the two rules really pick differently on some items
    # lm-eval's own scoring code on our log-likelihoods gives our per-sample correctness
    task = _lm_eval_task(docs, tmp_path / "mc.jsonl")
    res = score(ds, preds)
    for doc, lls, d in zip(task.test_docs(), lls_all, res["details"]):
        ours = task.process_results(doc, lls)
        assert ours["acc"] == float(d["choices"]["acc"] == d["gold"])
        assert ours["acc_norm"] == float(d["choices"]["acc_norm"] == d["gold"])


def test_acc_norm_divides_by_the_option_text_not_the_continuation():
    # " a" / " abc": by continuation length (2, 4) option 0 wins; by option text (1, 3) option 1
    assert decide([-2.0, -5.0], [1, 1], [1, 3])["acc_norm"] == 1
    assert decide([-2.0, -5.0], [1, 1], [2, 4])["acc_norm"] == 0
    assert decide([-2.0, -5.0], [1, 1], [1, 3])["acc"] == 0
    assert decide([-3.0, -5.0], [3, 2], [1, 1])["acc_nll"] == 0  # -1.0 > -2.5 per token
    assert decide([-1.0, -1.0], [1, 1], [4, 4]) == {"acc": 0, "acc_norm": 0, "acc_nll": 0}  # ties: the first


def test_one_run_reports_every_rule_and_raw_loglikelihoods(tiny_backend):
    cfg = load_dataset_config("arc-c", ["max_samples=6"])
    res = evaluate(tiny_backend, cfg)
    m = res["metrics"]
    assert {"acc", "acc_norm", "acc_nll"} <= set(m) and res["metric"] == "acc_norm"
    assert res["score"] == pytest.approx(m["acc_norm"], abs=1e-3)
    for d in res["details"]:
        assert set(d["logprobs"]) == set(d["tokens"]) == set(d["chars"]) == set(d["greedy"])
        assert len(d["logprobs"]) >= 3
        assert d["prediction"] == d["choices"]["acc_norm"] and d["rule"] == "acc_norm"
        assert all(v < 0 for v in d["logprobs"].values())
    # the same log-likelihoods, the other rule as the score: no second scoring pass
    acc = evaluate(tiny_backend, load_dataset_config("arc-c", ["max_samples=6", "inferencer.normalize=none"]))
    assert acc["metric"] == "acc" and acc["score"] == pytest.approx(m["acc"], abs=1e-3)
    assert [d["logprobs"] for d in acc["details"]] == [d["logprobs"] for d in res["details"]]
