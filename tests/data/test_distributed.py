"""The same stage code on Dask (a `distributed.LocalCluster`) gives byte-identical outputs."""

import pytest
from conftest import FIXTURES, process_config

from puyu_jax.data.process import run_process


@pytest.mark.slow
def test_dask_local_cluster_matches_local_run(tmp_path):
    paths = [FIXTURES / "c4_sample.jsonl", FIXTURES / "tang_poems.jsonl", FIXTURES / "lunyu.jsonl"]
    common = dict(chunk_docs=32, dedup={"line_min_docs": 3})
    local = run_process(process_config(tmp_path / "local", paths, **common))
    dask = run_process(process_config(tmp_path / "dask", paths, engine="dask", num_workers=2, **common))
    assert dask["kept"] == local["kept"] > 0 and dask["stages"] == local["stages"]
    names = sorted(p.name for p in (tmp_path / "local").glob("part-*")) + ["dropped.jsonl.zst"]
    for name in names:
        assert (tmp_path / "dask" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
