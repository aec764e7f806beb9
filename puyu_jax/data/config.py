"""Typed configs for `puyu data process` and `puyu data tokenize`.

Every stage has its own frozen sub-config; `ProcessConfig.stages` lists the per-document
stages in the order they run (dedup always runs after them, over the whole corpus).
"""

from __future__ import annotations

from dataclasses import dataclass, field

DOC_STAGES = ("extract", "normalize", "langid", "rules", "quality", "pii")
INPUT_FORMATS = ("auto", "jsonl", "parquet", "text", "html")
TEXT_SPLITS = ("file", "line", "blank_line")
OUTPUT_FORMATS = ("jsonl.zst", "parquet")


@dataclass(frozen=True)
class InputConfig:
    """Where documents come from.

    `paths` are files, directories (searched recursively) or glob patterns. Formats are
    guessed from suffixes when `format` is auto: .jsonl/.json(.gz|.zst), .parquet,
    .txt, .html/.htm. Plain text is cut into documents by `text_split`.
    """

    paths: tuple[str, ...] = ()
    format: str = "auto"
    text_key: str = "text"
    id_key: str = "id"
    html_key: str = ""  # a jsonl/parquet field holding HTML to extract (empty: none)
    text_split: str = "blank_line"

    def __post_init__(self):
        if self.format not in INPUT_FORMATS:
            raise ValueError(f"format={self.format!r}: expected one of {INPUT_FORMATS}")
        if self.text_split not in TEXT_SPLITS:
            raise ValueError(f"text_split={self.text_split!r}: expected one of {TEXT_SPLITS}")


@dataclass(frozen=True)
class ExtractConfig:
    """HTML main-text extraction with trafilatura (runs on HTML documents only)."""

    include_tables: bool = False
    include_comments: bool = False
    favor_precision: bool = True


@dataclass(frozen=True)
class NormalizeConfig:
    """ftfy mojibake repair plus whitespace clean-up."""

    unicode_form: str = "NFC"  # NFKC would fold Chinese full-width punctuation
    # ftfy folds full-width characters and curly quotes by default; both are normal in Chinese
    fix_character_width: bool = False
    uncurl_quotes: bool = False
    collapse_blank_lines: bool = True


@dataclass(frozen=True)
class LangIdConfig:
    """py3langid (its model ships inside the wheel); keep documents whose language is listed.

    `zh` stands for every Chinese variety (Cantonese yue, Wu wuu, literary lzh, ...; traditional
    or simplified script): documents get the macro-language in ``lang`` and the variety in
    ``lang_variety``; `min_score` applies to the macro-language's summed probability.
    """

    keep: tuple[str, ...] = ("en", "zh")
    min_score: float = 0.4  # normalized probability of the top language
    max_chars: int = 2000  # classify the first N characters


@dataclass(frozen=True)
class RulesConfig:
    """Gopher (Rae et al. 2021) and C4 style rule filters; 0 disables a numeric rule.

    Words are runs of letters/digits, and every CJK character is a word of its own, so
    length and n-gram rules count characters in Chinese text.
    """

    min_words: int = 50
    min_cjk_chars: int = 8  # min_words for CJK text (one word per character): short classical texts are whole
    max_words: int = 100_000
    min_mean_word_len: float = 3.0  # skipped for CJK text
    max_mean_word_len: float = 10.0
    max_symbol_word_ratio: float = 0.1  # '#' and ellipses per word
    max_bullet_lines_frac: float = 0.9
    max_ellipsis_lines_frac: float = 0.3
    min_alpha_words_frac: float = 0.8
    min_stop_words: int = 2  # alphabetic text only (Gopher); not applied to CJK text
    max_dup_line_frac: float = 0.3
    max_dup_para_frac: float = 0.3
    max_dup_line_char_frac: float = 0.2
    max_dup_para_char_frac: float = 0.2
    # top n-gram character fraction for n = 2, 3, 4 (Gopher)
    max_top_ngram_char_frac: tuple[float, ...] = (0.2, 0.18, 0.16)
    # duplicated n-gram character fraction for n = 5 .. 10 (Gopher)
    max_dup_ngram_char_frac: tuple[float, ...] = (0.15, 0.14, 0.13, 0.12, 0.11, 0.10)
    # in CJK text a word is one character: n-gram sizes above are multiplied by this
    cjk_ngram_scale: int = 2
    drop_lorem_ipsum: bool = True  # C4
    drop_curly_brace: bool = False  # C4 drops any '{' (code); off by default
    min_terminal_punct_lines_frac: float = 0.0  # C4-like; 0 disables


@dataclass(frozen=True)
class QualityConfig:
    """Perplexity under a hashed character 3-gram LM trained on shipped reference text.

    Lower is better; a document is dropped when its perplexity exceeds the threshold
    for its language (`max_ppl[lang]`, else `default_max_ppl`).
    """

    reference: tuple[str, ...] = ()  # reference text files; empty = the shipped assets
    order: int = 3
    buckets_log2: int = 20
    max_ppl: dict[str, float] = field(default_factory=lambda: {"en": 20.0, "zh": 12000.0})
    default_max_ppl: float = 60.0
    max_chars: int = 20_000  # score the first N characters


@dataclass(frozen=True)
class PiiConfig:
    """Masks e-mail addresses, phone numbers and IP addresses in place."""

    email: bool = True
    phone: bool = True
    ip: bool = True
    email_token: str = "<EMAIL>"
    phone_token: str = "<PHONE>"
    ip_token: str = "<IP>"


@dataclass(frozen=True)
class DedupConfig:
    """Document-level exact and MinHash-LSH near-dup removal, then line-level dedup.

    MinHash uses `bands * rows` permutations over word n-grams (CJK: character n-grams);
    LSH candidates are confirmed when their estimated Jaccard similarity is at least
    `threshold`. The first document (in input order) of a duplicate group is kept.
    A line found in at least `line_min_docs` kept documents is boilerplate and removed
    from all of them (0 disables).
    """

    exact: bool = True
    near: bool = True
    ngram: int = 5
    bands: int = 16
    rows: int = 8
    threshold: float = 0.7
    seed: int = 1
    line_min_docs: int = 0
    line_min_chars: int = 10
    min_chars_after_line_dedup: int = 50


@dataclass(frozen=True)
class OutputConfig:
    """Output shards: kept docs as `part-NNNNN.<format>`, dropped ones in `dropped.jsonl.zst`."""

    dir: str = "runs/data"
    format: str = "jsonl.zst"
    docs_per_shard: int = 10_000
    keep_dropped_text: bool = True

    def __post_init__(self):
        if self.format not in OUTPUT_FORMATS:
            raise ValueError(f"format={self.format!r}: expected one of {OUTPUT_FORMATS}")


@dataclass(frozen=True)
class ProcessConfig:
    """One `puyu data process` run."""

    input: InputConfig = field(default_factory=InputConfig)
    stages: tuple[str, ...] = DOC_STAGES
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    langid: LangIdConfig = field(default_factory=LangIdConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    pii: PiiConfig = field(default_factory=PiiConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    engine: str = "local"  # local (multiprocessing) or dask
    num_workers: int = 0  # 0 = all cores; 1 = in-process
    chunk_docs: int = 256  # documents per work unit
    dask_address: str = ""  # dask scheduler address; empty = a LocalCluster
    progress: bool = True

    def __post_init__(self):
        bad = [s for s in self.stages if s not in DOC_STAGES]
        if bad:
            raise ValueError(f"stages: unknown {bad}; choose from {DOC_STAGES}")
        if self.engine not in ("local", "dask"):
            raise ValueError(f"engine={self.engine!r}: expected local or dask")


@dataclass(frozen=True)
class TokenizeConfig:
    """One `puyu data tokenize` run: documents -> packed array_record shards."""

    inputs: tuple[str, ...] = ()  # processed output dirs or jsonl(.zst)/parquet files
    text_key: str = "text"
    tokenizer: str = "smollm2"  # tokenizer dir, .gguf file, or `smollm2`
    out_dir: str = "runs/packed"
    seq_len: int = 2048
    sequences_per_shard: int = 10_000
    add_bos: bool = False
    pad_id: int = -1  # -1 = the tokenizer's eos id
