"""A tensorflow-datasets builder over a packed dataset, so the same sequences load through
``tfds.data_source`` / ``builder.as_data_source()`` (array_record; no TensorFlow needed).

    builder = PuyuPacked(packed_dir="runs/packed", data_dir="runs/tfds")
    builder.download_and_prepare()
    train = builder.as_data_source()["train"]      # train[i] -> tokens / segment_ids / positions
    # later, anywhere: tfds.data_source("puyu_packed", data_dir="runs/tfds", builder_kwargs=...)
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from puyu_jax.data.packed import FIELDS, PackedSource, read_index


class PuyuPacked(tfds.core.GeneratorBasedBuilder):
    """Packed pretraining sequences: int32 ``tokens``, ``segment_ids``, ``positions`` [seq_len].

    Args (keyword):
        packed_dir: a directory written by `puyu data tokenize`; needed to prepare, and
            optional when loading an already prepared dataset whose `seq_len` is given.
        seq_len: sequence length (read from the packed index when `packed_dir` is set).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Packed sequences from `puyu data tokenize`."}

    def __init__(self, *, packed_dir: str | None = None, seq_len: int | None = None, **kwargs):
        self._packed_dir = packed_dir
        if seq_len is None:
            if packed_dir is None:
                raise ValueError("PuyuPacked needs packed_dir or seq_len")
            seq_len = int(read_index(packed_dir)["seq_len"])
        self._seq_len = seq_len
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        spec = {k: tfds.features.Tensor(shape=(self._seq_len,), dtype=np.int32) for k in FIELDS}
        return self.dataset_info_from_configs(
            description="Fixed-length packed token sequences with segment ids and per-document positions.",
            features=tfds.features.FeaturesDict(spec),
            disable_shuffling=True,  # keep the packed order (the loader shuffles)
        )

    def _split_generators(self, dl_manager):
        if self._packed_dir is None:
            raise ValueError("preparing PuyuPacked needs packed_dir")
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        src = PackedSource(self._packed_dir)
        for i in range(len(src)):
            yield i, src[i]
