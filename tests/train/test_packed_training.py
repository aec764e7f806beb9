"""Training on `puyu data tokenize` output: packed documents, segment masks, loader state in checkpoints."""

import json
from pathlib import Path

from puyu_jax.config import load_config
from puyu_jax.data.config import TokenizeConfig
from puyu_jax.data.pack import run_tokenize
from puyu_jax.train.config import TrainConfig
from puyu_jax.train.loop import train

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "fixtures"


def test_train_and_resume_on_packed_shards(tmp_path):
    run_tokenize(load_config(TokenizeConfig, {"inputs": [str(FIXTURES / "c4_sample.jsonl")], "tokenizer": "smollm2",
                                              "out_dir": str(tmp_path / "packed"), "seq_len": 128,
                                              "sequences_per_shard": 64}))
    base = {"model": "tiny", "model.vocab_size": 49152, "data": {"source": "packed", "path": str(tmp_path / "packed"),
            "seq_len": 128}, "batch_size": 8, "steps": 6, "tensorboard": False,
            "checkpoint": {"every": 3, "async_save": False}}
    ref = train(load_config(TrainConfig, base, [f"out_dir={tmp_path / 'ref'}"]))
    train(load_config(TrainConfig, base, [f"out_dir={tmp_path / 'r'}", "steps=3"]))
    out = train(load_config(TrainConfig, base, [f"out_dir={tmp_path / 'r'}"]), resume=True)
    assert out["start_step"] == 3

    def losses(d):
        rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in rows}

    assert losses(tmp_path / "r") == losses(tmp_path / "ref")  # loader state restored exactly
    assert ref["loss"] < 11.0  # starts near ln(49152) = 10.8 and moves
