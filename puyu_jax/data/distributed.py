"""Running `work_chunk` on a Dask cluster (`engine: dask`).

The per-document stages and dedup signatures run unchanged as tasks of a ``dask.bag``
(one partition per chunk, order kept); the driver then runs the global dedup passes and
writes the same shards as a local run. With ``dask_address`` empty a
``distributed.LocalCluster`` (worker processes on this machine) is started; otherwise the
client connects to a running scheduler (``dask scheduler`` plus ``dask worker`` on each
machine, or dask-jobqueue / dask-kubernetes).
"""

from __future__ import annotations

import os

from puyu_jax.data.config import ProcessConfig


def map_chunks_dask(chunks: list[list], cfg: ProcessConfig, client=None) -> list[list[dict]]:
    """`work_chunk` over `chunks` on Dask; results in chunk order."""
    import dask.bag as db
    from distributed import Client, LocalCluster

    from puyu_jax.data.process import work_chunk

    if not chunks:
        return []
    own = None
    if client is None:
        if cfg.dask_address:
            client = own = Client(cfg.dask_address)
        else:
            n = cfg.num_workers or os.cpu_count() or 1
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
            client = own = Client(cluster)
    try:
        bag = db.from_sequence(chunks, npartitions=len(chunks))
        # each partition holds exactly one chunk: map_partitions gives it to work_chunk whole
        parts = bag.map_partitions(lambda part: [work_chunk(list(part)[0], cfg)])
        return parts.compute(scheduler=client.get)
    finally:
        if own is not None:
            cluster = getattr(own, "cluster", None)
            own.close()
            if cluster is not None:
                cluster.close()
