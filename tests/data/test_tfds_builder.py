"""The packed data loads through tensorflow-datasets' array_record data source, without TensorFlow."""

import subprocess
import sys
import textwrap

from conftest import FIXTURES


def test_tfds_data_source_reads_the_packed_sequences(tmp_path):
    # a fresh interpreter, so that "tensorflow was never imported" is meaningful
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        import tensorflow_datasets as tfds
        from puyu_jax.config import load_config
        from puyu_jax.data.config import TokenizeConfig
        from puyu_jax.data.pack import run_tokenize
        from puyu_jax.data.packed import PackedSource
        from puyu_jax.data.tfds_builder import PuyuPacked

        cfg = load_config(TokenizeConfig, {{"inputs": ["{FIXTURES / 'lunyu.jsonl'}"], "out_dir": "{tmp_path / 'packed'}",
                                           "seq_len": 64, "sequences_per_shard": 50}})
        run_tokenize(cfg)
        builder = PuyuPacked(packed_dir="{tmp_path / 'packed'}", data_dir="{tmp_path / 'tfds'}")
        builder.download_and_prepare()
        src = PackedSource("{tmp_path / 'packed'}")
        for ds in (builder.as_data_source()["train"],
                   tfds.data_source("puyu_packed", data_dir="{tmp_path / 'tfds'}", builder_kwargs={{"seq_len": 64}})["train"]):
            assert len(ds) == len(src) > 50
            for i in range(len(src)):
                for k in ("tokens", "segment_ids", "positions"):
                    assert ds[i][k].dtype == np.int32 and np.array_equal(ds[i][k], src[i][k])
        assert not any(m == "tensorflow" or m.startswith("tensorflow.") for m in sys.modules)
        print("OK", len(src))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]
