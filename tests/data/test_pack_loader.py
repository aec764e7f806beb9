"""Tokenize + pack into array_record shards, and the grain loader: contract, resume."""

import json
from collections import Counter

import numpy as np
import pytest
from conftest import FIXTURES, read_jsonl

from puyu_jax.config import load_config
from puyu_jax.data.config import TokenizeConfig
from puyu_jax.data.loader import loader_state, make_loader, restore_loader
from puyu_jax.data.pack import pack_sequences, resolve_tokenizer, run_tokenize
from puyu_jax.data.packed import PackedSource, read_index

SEQ = 128


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    out = tmp_path_factory.mktemp("packed")
    cfg = load_config(TokenizeConfig, {"inputs": [str(FIXTURES / "c4_sample.jsonl"), str(FIXTURES / "lunyu.jsonl")],
                                       "out_dir": str(out), "seq_len": SEQ, "sequences_per_shard": 300})
    return out, run_tokenize(cfg)


def test_pack_sequences_layout():
    seqs = list(pack_sequences([[1, 2, 9], [3, 9], [4, 5, 6, 7, 8, 9], [7, 9]], seq_len=6, pad_id=0))
    assert [s.tolist() for s in seqs] == [
        [[1, 2, 9, 3, 9, 0], [1, 1, 1, 2, 2, 0], [0, 1, 2, 0, 1, 0]],
        [[4, 5, 6, 7, 8, 9], [1, 1, 1, 1, 1, 1], [0, 1, 2, 3, 4, 5]],
        [[7, 9, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0]],
    ]
    long = list(pack_sequences([list(range(1, 15))], seq_len=6, pad_id=0))
    assert [s[0].tolist() for s in long] == [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12], [13, 14, 0, 0, 0, 0]]


def test_index_contract_and_round_trip(packed):
    out, index = packed
    assert index == read_index(out)
    assert set(index) == {"seq_len", "num_sequences", "shards", "tokenizer", "vocab_size", "eos_id",
                          "num_tokens", "num_documents", "pad_id"}
    assert len(index["shards"]) >= 2 and index["shards"][0]["path"] == f"packed-00000-of-{len(index['shards']):05d}.array_record"
    src = PackedSource(out)
    assert len(src) == index["num_sequences"] == sum(s["num_records"] for s in index["shards"])
    rows = [src[i] for i in range(len(src))]
    assert all(r["tokens"].dtype == np.int32 and r["tokens"].shape == (SEQ,) for r in rows)
    # the documents come back in order: each segment ends with eos, positions restart at 0
    tok = resolve_tokenizer("smollm2")
    texts = [r["text"] for r in read_jsonl(FIXTURES / "c4_sample.jsonl")] + [r["text"] for r in read_jsonl(FIXTURES / "lunyu.jsonl")]
    expected = [tok.encode(t, add_bos=False, allow_special=False) + [index["eos_id"]] for t in texts]
    got, cur = [], []
    for r in rows:
        segs = r["segment_ids"]
        for s in range(1, segs.max() + 1):
            m = segs == s
            assert np.array_equal(r["positions"][m], np.arange(m.sum()))
            cur += r["tokens"][m].tolist()
            if cur[-1] == index["eos_id"]:
                got.append(cur)
                cur = []
        assert (r["tokens"][segs == 0] == index["pad_id"]).all()
    assert got == expected
    assert index["num_tokens"] == sum(map(len, expected)) and index["num_documents"] == len(texts)


def _shuffled_indices(n, seed):
    import grain

    return list(grain.MapDataset.range(n).shuffle(seed=seed))


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b):
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


def test_loader_batches_shuffle_and_shard(packed):
    out, index = packed
    it = make_loader(out, batch_size=4, seed=3, num_epochs=1)
    batches = list(it)
    assert len(batches) == index["num_sequences"] // 4
    assert batches[0]["tokens"].shape == (4, SEQ) and set(batches[0]) == {"tokens", "segment_ids", "positions"}
    plain = list(make_loader(out, batch_size=4, seed=3, num_epochs=1, shuffle=False))
    assert not _same(batches[:3], plain[:3])  # shuffled
    src = PackedSource(out)
    everything = Counter(tuple(src[i]["tokens"].tolist()) for i in range(len(src)))
    epoch = Counter(tuple(r.tolist()) for b in batches for r in b["tokens"])
    assert epoch.total() == len(batches) * 4 and not epoch - everything  # a permutation, less the remainder
    # two hosts: complementary halves of the same global order
    hosts = [list(make_loader(out, batch_size=2, seed=3, num_epochs=1, shard_index=h, shard_count=2)) for h in (0, 1)]
    both = Counter(tuple(r.tolist()) for h in hosts for b in h for r in b["tokens"])
    assert not both - everything and both.total() >= index["num_sequences"] - 4
    global_order = [src[i]["tokens"] for i in _shuffled_indices(len(src), seed=3)]
    assert np.array_equal(hosts[1][0]["tokens"], np.stack([global_order[1], global_order[3]]))


def test_resumed_loader_yields_the_same_batches(packed):
    out, index = packed
    kw = dict(batch_size=8, seed=7)  # infinite, reshuffled each epoch
    n_epoch = index["num_sequences"] // 8
    reference = _take(make_loader(out, **kw), 2 * n_epoch + 5)
    it = make_loader(out, **kw)
    _take(it, n_epoch + 3)  # past an epoch boundary
    state = json.loads(json.dumps(loader_state(it)))  # as the checkpoint stores it
    resumed = restore_loader(make_loader(out, **kw), state)
    assert _same(_take(resumed, n_epoch + 2), reference[n_epoch + 3 :])
