"""One tokenizer interface over three real backends.

* ``tokenizer.json``  -> the HF ``tokenizers`` library,
* ``tokenizer.model`` -> the ``sentencepiece`` library,
* a ``.gguf`` file    -> a ``tokenizers.Tokenizer`` rebuilt from the GGUF metadata (llama.cpp's
  ``tokenizer.ggml.*`` keys), for byte-level BPE (``gpt2``) and sentencepiece-style (``llama``) vocabularies.

BOS handling, the set of ids that end generation and the chat template live on :class:`Tokenizer`,
so every backend behaves the same way towards generation and chat formatting.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers

logger = logging.getLogger(__name__)

__all__ = ["Tokenizer", "load_tokenizer", "tokenizer_from_gguf", "TURN_END_TOKENS"]

#: Tokens that close a chat turn; when one appears in a checkpoint's chat template it also ends generation.
TURN_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")

# sentencepiece / GGUF token types (llama.cpp copied sentencepiece's numbering).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# `tokenizer.ggml.pre` -> (split digits one by one first, regex for the byte-level split).
_GGUF_PRE = {
    "default": (False, _GPT2_SPLIT),
    "gpt2": (False, _GPT2_SPLIT),
    # llama.cpp: "\p{N}" then the GPT-2 regex; SmolLM's tokenizer.json: Digits(individual) + ByteLevel.
    "smollm": (True, _GPT2_SPLIT),
    "starcoder": (True, _GPT2_SPLIT),
    "refact": (True, _GPT2_SPLIT),
    "llama-bpe": (False, _LLAMA3_SPLIT),
    "llama3": (False, _LLAMA3_SPLIT),
    "llama-v3": (False, _LLAMA3_SPLIT),
    "smaug-bpe": (False, _LLAMA3_SPLIT),
    "qwen2": (False, _QWEN2_SPLIT),
    "deepseek-r1-qwen": (False, _QWEN2_SPLIT),
}


@functools.lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json spells it: a string or ``{"content": ...}``."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: Path) -> dict:
    if path.is_file():
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    return {}


# --------------------------------------------------------------------------------------------- backends


class _HFBackend:
    """A ``tokenizers.Tokenizer``; added tokens are always matched whole in the text.

    With a sentencepiece-style ``Prepend("▁")`` normalizer (legacy Llama ``tokenizer.json``, llama.cpp's SPM
    tokenization) every text segment between added tokens gets the prefix space, so decoding goes segment by
    segment, each losing its prefix again, which makes ``decode(encode(x)) == x``.
    """

    kind = "hf"

    def __init__(self, tk: tokenizers.Tokenizer):
        self.tk = tk
        added = tk.get_added_tokens_decoder()
        self.special = {t.content: i for i, t in sorted(added.items()) if t.special}
        self._added = {i: t.content for i, t in added.items()}
        self._segment_decode = "Prepend" in repr(tk.normalizer)

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, s: str) -> int | None:
        return self.tk.token_to_id(s)

    def id_to_token(self, i: int) -> str | None:
        return self.tk.id_to_token(i)

    def encode(self, text: str, allow_special: bool) -> list[int]:
        # encode_batch releases the GIL (encode does not): a long prompt tokenized in a server's worker
        # thread must not stop its event loop
        if allow_special:
            return self.tk.encode_batch([text], add_special_tokens=False)[0].ids
        self.tk.encode_special_tokens = True
        try:
            return self.tk.encode_batch([text], add_special_tokens=False)[0].ids
        finally:
            self.tk.encode_special_tokens = False

    def decode(self, ids: list[int], skip_special: bool) -> str:
        if not self._segment_decode:
            return self.tk.decode(ids, skip_special_tokens=skip_special)
        special_ids = set(self.special.values())
        parts: list[str] = []
        run: list[int] = []
        for i in [*ids, None]:
            if i is None or i in self._added:
                if run:
                    parts.append(self.tk.decode(run))
                    run = []
                if i is not None and not (skip_special and i in special_ids):
                    parts.append(self._added[i])
            else:
                run.append(i)
        return "".join(parts)

    def post_processor_bos(self) -> int | None:
        """The id the post-processor puts in front of a sequence, if any."""
        plain = self.tk.encode("a", add_special_tokens=False).ids
        full = self.tk.encode("a", add_special_tokens=True).ids
        if len(full) > len(plain) and full[-len(plain) :] == plain and full[0] in self.special.values():
            return full[0]
        return None

    def save(self, directory: Path) -> dict:
        self.tk.save(str(directory / "tokenizer.json"))
        return {"tokenizer_class": "PreTrainedTokenizerFast"}


class _SPMBackend:
    """A sentencepiece model. Control and user-defined pieces (and extra added tokens) are parsed from text.

    The dummy-prefix space (if the model adds one) goes in front of text at the start of the input or right
    after a BOS token, as when each turn is encoded on its own with BOS (Llama-2's reference chat code), but
    not after other special tokens (``<|im_start|>user`` -> ``<|im_start|>``, ``user``), as transformers'
    non-legacy Llama tokenizer does. sentencepiece itself adds a lone ``▁`` before a special token that
    starts the text; we do not.
    """

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, extra_tokens: dict[int, str] | None = None):
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2

        self.proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        m = sentencepiece_model_pb2.ModelProto()
        m.ParseFromString(model_proto)
        self.add_dummy_prefix = m.normalizer_spec.add_dummy_prefix
        if self.add_dummy_prefix:  # a twin that encodes/decodes text in the middle of the input
            m.normalizer_spec.add_dummy_prefix = False
            self.sp_mid = spm.SentencePieceProcessor(model_proto=m.SerializeToString())
        else:
            self.sp_mid = self.sp
        n = self.sp.get_piece_size()
        self.extra = {i: s for i, s in (extra_tokens or {}).items() if i >= n}
        self.special = {
            p.piece: i for i, p in enumerate(m.pieces) if p.type in (_CONTROL, _USER_DEFINED)
        } | {s: i for i, s in self.extra.items()}
        self._extra_ids = {s: i for i, s in self.extra.items()}
        names = sorted((s for s in self.special if s), key=len, reverse=True)
        self._split = re.compile("|".join(map(re.escape, names))) if names else None
        self.bos = self.sp.bos_id() if self.sp.bos_id() >= 0 else None

    @property
    def vocab_size(self) -> int:
        return max([self.sp.get_piece_size(), *[i + 1 for i in self.extra]])

    def token_to_id(self, s: str) -> int | None:
        if s in self._extra_ids:
            return self._extra_ids[s]
        i = self.sp.piece_to_id(s)
        return None if i == self.sp.unk_id() and s != self.sp.id_to_piece(i) else i

    def id_to_token(self, i: int) -> str | None:
        if i in self.extra:
            return self.extra[i]
        return self.sp.id_to_piece(i) if 0 <= i < self.sp.get_piece_size() else None

    def encode(self, text: str, allow_special: bool) -> list[int]:
        if not allow_special or self._split is None:
            return self.sp.encode(text)
        out: list[int] = []
        pos, leading = 0, True
        for m in self._split.finditer(text):
            if m.start() > pos:
                out += (self.sp if leading else self.sp_mid).encode(text[pos : m.start()])
                leading = False
            tid = self.special[m.group()]
            leading = tid == self.bos
            out.append(tid)
            pos = m.end()
        if pos < len(text):
            out += (self.sp if leading else self.sp_mid).encode(text[pos:])
        return out

    def decode(self, ids: list[int], skip_special: bool) -> str:
        special_ids = set(self.special.values())
        parts: list[str] = []
        run: list[int] = []
        leading = True

        def flush() -> None:
            nonlocal leading
            if run:
                parts.append((self.sp if leading else self.sp_mid).decode(run))
                run.clear()
                leading = False

        for i in ids:
            if i in special_ids:
                flush()
                leading = i == self.bos
                if not skip_special:
                    parts.append(self.id_to_token(i))
            else:
                run.append(i)
        flush()
        return "".join(parts)

    def save(self, directory: Path) -> dict:
        (directory / "tokenizer.model").write_bytes(self.proto)
        if not self.extra:
            return {}
        return {"added_tokens_decoder": {str(i): {"content": s, "special": True} for i, s in self.extra.items()}}


# --------------------------------------------------------------------------------------------- Tokenizer


class Tokenizer:
    """A tokenizer with BOS/EOS conventions and the checkpoint's chat template.

    Build one with :func:`load_tokenizer` or :func:`tokenizer_from_gguf`.

    Args:
        backend: a ``_HFBackend`` or ``_SPMBackend``.
        bos_id, eos_id, pad_id, unk_id: special ids (None when the vocabulary has none).
        eos_ids: further ids that end generation (merged with ``eos_id`` and the chat template's turn end).
        chat_template: jinja source of the checkpoint's chat template.
        add_bos: whether :meth:`encode` prepends BOS by default.
    """

    def __init__(
        self,
        backend: _HFBackend | _SPMBackend,
        *,
        bos_id: int | None = None,
        eos_id: int | None = None,
        pad_id: int | None = None,
        unk_id: int | None = None,
        eos_ids: Iterable[int] = (),
        chat_template: str | None = None,
        add_bos: bool = False,
    ):
        self._backend = backend
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = bos_id, eos_id, pad_id, unk_id
        self.chat_template = chat_template
        self.add_bos = bool(add_bos and bos_id is not None)
        ends = [eos_id] if eos_id is not None else []
        ends += [int(i) for i in eos_ids]
        if chat_template:
            for tok in TURN_END_TOKENS:
                if tok in chat_template and (tid := backend.token_to_id(tok)) is not None:
                    ends.append(tid)
        self.eos_ids: tuple[int, ...] = tuple(dict.fromkeys(ends))

    # ---- properties
    @property
    def backend(self) -> str:
        """``"hf"`` (tokenizers) or ``"sentencepiece"``."""
        return self._backend.kind

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self._backend.vocab_size

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special/control token text -> id (matched whole in text by :meth:`encode`)."""
        return dict(self._backend.special)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (
            f"Tokenizer(backend={self.backend!r}, vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
            f"eos_ids={self.eos_ids}, add_bos={self.add_bos})"
        )

    def _text(self, i: int | None) -> str | None:
        return None if i is None else self._backend.id_to_token(i)

    @property
    def bos_token(self) -> str | None:
        """Text of the BOS token."""
        return self._text(self.bos_id)

    @property
    def eos_token(self) -> str | None:
        """Text of the EOS token."""
        return self._text(self.eos_id)

    @property
    def pad_token(self) -> str | None:
        """Text of the PAD token."""
        return self._text(self.pad_id)

    @property
    def unk_token(self) -> str | None:
        """Text of the UNK token."""
        return self._text(self.unk_id)

    # ---- core
    def encode(self, text: str, add_bos: bool | None = None, allow_special: bool = True) -> list[int]:
        """Text -> ids.

        Args:
            text: the text.
            add_bos: prepend BOS; None uses :attr:`add_bos`.
            allow_special: match special tokens such as ``<|im_start|>`` in the text as single ids; when False
                they are tokenized as plain text (sentencepiece user-defined pieces are always matched).

        Returns:
            The token ids.
        """
        ids = self._backend.encode(text, allow_special)
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Ids -> text.

        Args:
            ids: token ids (any iterable of ints, e.g. a numpy/jax array).
            skip_special: drop special tokens from the output.

        Returns:
            The decoded text.
        """
        return self._backend.decode([int(i) for i in ids], skip_special)

    def token_to_id(self, s: str) -> int | None:
        """Vocabulary id of token ``s`` (its vocabulary spelling), or None."""
        return self._backend.token_to_id(s)

    def id_to_token(self, i: int) -> str:
        """Vocabulary spelling of id ``i``.

        Raises:
            IndexError: ``i`` is not a valid id.
        """
        tok = self._backend.id_to_token(int(i))
        if tok is None:
            raise IndexError(f"token id {i} out of range for vocabulary of size {self.vocab_size}")
        return tok

    def vocab_encoding(self) -> tuple[list[str], str, bool]:
        """Every id's vocabulary spelling and how spellings map to bytes (for grammar engines).

        Returns:
            (spellings, encoding, prefix_space): ``spellings[i]`` is id ``i``'s vocabulary spelling
            (``""`` for holes); encoding is ``"byte_level"`` (GPT-2 byte-to-unicode spellings),
            ``"byte_fallback"`` (sentencepiece: ``▁`` for space, ``<0xNN>`` byte pieces) or ``"raw"``
            (spellings are the text); prefix_space says whether encoding prepends a space.
        """
        spellings = [self._backend.id_to_token(i) or "" for i in range(self.vocab_size)]
        if isinstance(self._backend, _SPMBackend):
            return spellings, "byte_fallback", bool(self._backend.add_dummy_prefix)
        spec = json.loads(self._backend.tk.to_str())
        text = json.dumps(spec.get("decoder") or {}, ensure_ascii=False)
        if '"ByteLevel"' in text:
            encoding = "byte_level"
        elif '"ByteFallback"' in text or '"Metaspace"' in text or "\u2581" in text:
            encoding = "byte_fallback"
        else:
            encoding = "raw"
        normalizer = json.dumps(spec.get("normalizer") or {}) + json.dumps(spec.get("pre_tokenizer") or {})
        prefix_space = '"Prepend"' in normalizer or '"prepend_scheme": "always"' in normalizer
        return spellings, encoding, prefix_space

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``tokenizer.json`` or ``tokenizer.model`` plus ``tokenizer_config.json`` to ``directory``.

        Args:
            directory: target directory (created if missing); :func:`load_tokenizer` reads it back identically.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        config = self._backend.save(d)
        config.update(
            bos_token=self.bos_token,
            eos_token=self.eos_token,
            pad_token=self.pad_token,
            unk_token=self.unk_token,
            add_bos_token=self.add_bos,
            eos_token_ids=list(self.eos_ids),
        )
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        with open(d / "tokenizer_config.json", "w", encoding="utf-8") as f:
            json.dump(config, f, ensure_ascii=False, indent=2)


# --------------------------------------------------------------------------------------------- loading


def _guess(backend: _HFBackend | _SPMBackend, names: Sequence[str]) -> int | None:
    for n in names:
        if (i := backend.token_to_id(n)) is not None and n in backend.special:
            return i
    return None


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer from a directory or a GGUF file.

    Args:
        path: a ``.gguf`` file, or a directory with ``tokenizer.json`` (preferred) or ``tokenizer.model``,
            plus optional ``tokenizer_config.json``, ``special_tokens_map.json``, ``chat_template.jinja``
            and ``generation_config.json``.

    Returns:
        The :class:`Tokenizer`.
    """
    p = Path(path)
    if p.is_file() and p.suffix == ".gguf":
        return tokenizer_from_gguf(p)
    if p.is_file() and p.name in ("tokenizer.json", "tokenizer.model"):
        p = p.parent
    if not p.is_dir():
        raise FileNotFoundError(f"no tokenizer at {p}")
    cfg = _read_json(p / "tokenizer_config.json")
    smap = _read_json(p / "special_tokens_map.json")
    gen = _read_json(p / "generation_config.json")

    if (p / "tokenizer.json").is_file():
        backend: _HFBackend | _SPMBackend = _HFBackend(tokenizers.Tokenizer.from_file(str(p / "tokenizer.json")))
    elif (p / "tokenizer.model").is_file():
        extra = {
            int(i): t["content"]
            for i, t in (cfg.get("added_tokens_decoder") or {}).items()
            if isinstance(t, dict) and "content" in t
        }
        backend = _SPMBackend((p / "tokenizer.model").read_bytes(), extra)
    else:
        raise FileNotFoundError(f"{p} has neither tokenizer.json nor tokenizer.model")

    def special_id(name: str) -> int | None:
        text = _token_text(cfg.get(name)) or _token_text(smap.get(name))
        return backend.token_to_id(text) if text is not None else None

    bos, eos, pad, unk = (special_id(n) for n in ("bos_token", "eos_token", "pad_token", "unk_token"))
    if isinstance(backend, _SPMBackend):
        sp = backend.sp
        bos = bos if bos is not None else (sp.bos_id() if sp.bos_id() >= 0 else None)
        eos = eos if eos is not None else (sp.eos_id() if sp.eos_id() >= 0 else None)
        pad = pad if pad is not None else (sp.pad_id() if sp.pad_id() >= 0 else None)
        unk = unk if unk is not None else (sp.unk_id() if sp.unk_id() >= 0 else None)
        add_bos = cfg.get("add_bos_token", True)
    else:
        pp_bos = backend.post_processor_bos()
        bos = bos if bos is not None else pp_bos
        bos = bos if bos is not None else _guess(backend, ("<s>", "<|begin_of_text|>", "<bos>"))
        eos = eos if eos is not None else _guess(backend, ("</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>"))
        unk_text = getattr(backend.tk.model, "unk_token", None)
        unk = unk if unk is not None else (backend.token_to_id(unk_text) if unk_text else None)
        add_bos = cfg.get("add_bos_token", pp_bos is not None and pp_bos == bos)
    eos_ids = list(cfg.get("eos_token_ids") or [])
    gen_eos = gen.get("eos_token_id")
    eos_ids += gen_eos if isinstance(gen_eos, list) else ([gen_eos] if isinstance(gen_eos, int) else [])

    template = cfg.get("chat_template")
    if isinstance(template, list):  # [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if template is None and (p / "chat_template.jinja").is_file():
        template = (p / "chat_template.jinja").read_text(encoding="utf-8")
    if template is None and (p / "chat_template.json").is_file():
        template = _read_json(p / "chat_template.json").get("chat_template")

    return Tokenizer(
        backend,
        bos_id=bos,
        eos_id=eos,
        pad_id=pad,
        unk_id=unk,
        eos_ids=eos_ids,
        chat_template=template,
        add_bos=bool(add_bos),
    )


# --------------------------------------------------------------------------------------------- GGUF


def _gguf_metadata(reader: Any) -> dict[str, Any]:
    """The ``tokenizer.*`` key/values of a ``gguf.GGUFReader``."""
    return {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _read_gguf_tokenizer_metadata(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``tokenizer.*`` key/values of a little-endian GGUF v2/v3 file, read straight from its header.

    Much faster than ``gguf.GGUFReader`` (which builds numpy views for every string of every array and maps
    all tensors). Returns None for files it does not handle (other versions or byte order).
    """
    import mmap
    import struct

    import numpy as np

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if mm[:4] != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        version, _, n_kv = struct.unpack_from("<IQQ", mm, 4)
        if version not in (2, 3):
            return None
        pos = 24
        out: dict[str, Any] = {}

        def string() -> str:
            nonlocal pos
            (n,) = struct.unpack_from("<Q", mm, pos)
            pos += 8 + n
            return mm[pos - n : pos].decode("utf-8", errors="replace")

        def value(vtype: int, keep: bool) -> Any:
            nonlocal pos
            if vtype == 8:
                return string()
            if vtype in _GGUF_SCALARS:
                fmt = _GGUF_SCALARS[vtype]
                (v,) = struct.unpack_from(fmt, mm, pos)
                pos += struct.calcsize(fmt)
                return v
            if vtype != 9:
                raise ValueError(f"bad GGUF value type {vtype} in {path}")
            etype, n = struct.unpack_from("<IQ", mm, pos)
            pos += 12
            if etype in _GGUF_SCALARS:
                dt = np.dtype(_GGUF_SCALARS[etype])
                arr = np.frombuffer(mm, dtype=dt, count=n, offset=pos) if keep else None
                pos += n * dt.itemsize
                return arr.tolist() if keep else None
            return [value(etype, keep) for _ in range(n)]

        for _ in range(n_kv):
            key = string()
            (vtype,) = struct.unpack_from("<I", mm, pos)
            pos += 4
            keep = key.startswith("tokenizer.")
            v = value(vtype, keep)
            if keep:
                out[key] = v
        return out


def _merges_from_scores(
    tokens: Sequence[str], scores: Sequence[float], types: Sequence[int]
) -> list[tuple[str, str]]:
    """BPE merges implied by a sentencepiece vocabulary: every split of a normal piece into two known pieces,
    ranked by the merged piece's score (best first), as transformers' ``generate_merges`` orders them."""
    vocab = {t: i for i, t in enumerate(tokens)}
    found = []
    for tok, score, typ in zip(tokens, scores, types):
        if typ != _NORMAL:
            continue
        local = [(tok[:k], tok[k:]) for k in range(1, len(tok)) if tok[:k] in vocab and tok[k:] in vocab]
        local.sort(key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
        found += [(score, left, right) for left, right in local]
    found.sort(key=lambda m: (-m[0], -len(m[1]), -len(m[2])))
    return [(left, right) for _, left, right in found]


def _gguf_byte_level(meta: dict[str, Any]) -> tokenizers.Tokenizer:
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab = {
        t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i for i, t in enumerate(tokens)
    }
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    tk = tokenizers.Tokenizer(
        models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    )
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in _GGUF_PRE:
        logger.warning("unknown tokenizer.ggml.pre %r; using the GPT-2 pre-tokenizer", pre)
    digits, split = _GGUF_PRE.get(pre, _GGUF_PRE["default"])
    steps = [pre_tokenizers.Digits(individual_digits=True)] if digits else []
    if split == _GPT2_SPLIT:
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    else:
        steps += [
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    tk.pre_tokenizer = steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)
    tk.decoder = decoders.ByteLevel()
    # A control token spelled outside the byte alphabet is a llama.cpp mislabel; it cannot be added as-is.
    _add_gguf_special(tk, meta, lambda t: set(t) <= alphabet)
    return tk


def _gguf_sentencepiece(meta: dict[str, Any]) -> tokenizers.Tokenizer:
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type") or [_NORMAL] * len(tokens)
    if "tokenizer.ggml.merges" in meta:
        merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    else:
        merges = _merges_from_scores(tokens, meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens), types)
    unk = meta.get("tokenizer.ggml.unknown_token_id")
    tk = tokenizers.Tokenizer(
        models.BPE(
            vocab={t: i for i, t in enumerate(tokens)},
            merges=merges,
            unk_token=tokens[unk] if unk is not None else None,
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    # As llama.cpp (and sentencepiece's add_dummy_prefix): a space in front of each text segment, also after
    # special tokens; transformers' Metaspace("first") instead skips it when the text starts with a space.
    prefix = meta.get("tokenizer.ggml.add_space_prefix", True)
    steps_n = [normalizers.Prepend("▁")] if prefix else []
    tk.normalizer = normalizers.Sequence([*steps_n, normalizers.Replace(" ", "▁")])
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tk.decoder = decoders.Sequence(steps)
    _add_gguf_special(tk, meta, lambda t: True)
    if unk is not None:
        tk.add_special_tokens([AddedToken(tokens[unk], normalized=False, special=True)])
    return tk


def _add_gguf_special(tk: tokenizers.Tokenizer, meta: dict[str, Any], addable: Any) -> None:
    """CONTROL tokens become special added tokens, USER_DEFINED ones plain added tokens (both matched whole)."""
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type") or ()
    control = [t for t, k in zip(tokens, types) if k == _CONTROL and addable(t)]
    user = [t for t, k in zip(tokens, types) if k == _USER_DEFINED and addable(t)]
    if control:
        tk.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in control])
    if user:
        tk.add_tokens([AddedToken(t, normalized=False, special=False) for t in user])


def tokenizer_from_gguf(reader_or_path: Any) -> Tokenizer:
    """Build a :class:`Tokenizer` from GGUF tokenizer metadata.

    Supports ``tokenizer.ggml.model`` ``"gpt2"`` (byte-level BPE; ``tokenizer.ggml.pre`` picks the split
    regex) and ``"llama"`` (sentencepiece-style pieces + scores with ``<0xNN>`` byte fallback).

    Args:
        reader_or_path: a ``gguf.GGUFReader`` or a path to a ``.gguf`` file.

    Returns:
        The :class:`Tokenizer` (HF backend); :meth:`Tokenizer.save` writes it as ``tokenizer.json``.
    """
    if isinstance(reader_or_path, (str, os.PathLike)):
        meta = _read_gguf_tokenizer_metadata(reader_or_path)
        if meta is None:
            import gguf

            meta = _gguf_metadata(gguf.GGUFReader(str(reader_or_path), "r"))
    else:
        meta = _gguf_metadata(reader_or_path)
    kind = meta.get("tokenizer.ggml.model")
    if kind == "gpt2":
        tk = _gguf_byte_level(meta)
        default_add_bos = False
    elif kind == "llama":
        tk = _gguf_sentencepiece(meta)
        default_add_bos = True  # llama.cpp adds BOS to sentencepiece vocabularies unless told otherwise
    else:
        raise ValueError(f"unsupported GGUF tokenizer model {kind!r} (supported: 'gpt2', 'llama')")
    backend = _HFBackend(tk)
    ids = {k: meta.get(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "padding", "unknown")}
    eos_ids = [meta[k] for k in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id") if k in meta]
    return Tokenizer(
        backend,
        bos_id=ids["bos"],
        eos_id=ids["eos"],
        pad_id=ids["padding"],
        unk_id=ids["unknown"],
        eos_ids=eos_ids,
        chat_template=meta.get("tokenizer.chat_template"),
        add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", default_add_bos)),
    )
