"""puyu_jax.data: 书生·万卷-style corpus processing and the packed grain input pipeline.

    run_process(ProcessConfig)   extract -> normalize -> langid -> rules -> quality -> PII,
                                 then exact / MinHash / line dedup; shards + report
    run_tokenize(TokenizeConfig) documents -> packed array_record shards + index.json
    PackedSource(dir)            random access to packed sequences
    make_loader(dir, ...)        grain iterator of batches; loader_state / restore_loader

Heavy dependencies (trafilatura, datasketch, dask, tensorflow-datasets) load lazily.
"""

from puyu_jax.data.config import (
    DedupConfig,
    ExtractConfig,
    InputConfig,
    LangIdConfig,
    NormalizeConfig,
    OutputConfig,
    PiiConfig,
    ProcessConfig,
    QualityConfig,
    RulesConfig,
    TokenizeConfig,
)
from puyu_jax.data.loader import loader_state, make_loader, restore_loader
from puyu_jax.data.pack import pack_sequences, run_tokenize
from puyu_jax.data.packed import PackedSource, read_index
from puyu_jax.data.process import dropped_records, read_docs, run_process

__all__ = [
    "DedupConfig",
    "ExtractConfig",
    "InputConfig",
    "LangIdConfig",
    "NormalizeConfig",
    "OutputConfig",
    "PackedSource",
    "PiiConfig",
    "ProcessConfig",
    "QualityConfig",
    "RulesConfig",
    "TokenizeConfig",
    "dropped_records",
    "loader_state",
    "make_loader",
    "pack_sequences",
    "read_docs",
    "read_index",
    "restore_loader",
    "run_process",
    "run_tokenize",
]
