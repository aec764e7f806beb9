"""Per-document stages. Each takes a document dict (``text``, ``id``, ``source``, ...)
and its sub-config, may rewrite ``doc["text"]`` or add fields, and returns None to keep
the document or a short drop reason. `DocPipeline` runs the configured stages in order.

The functions are plain and picklable so that the same code runs in a local process
pool and on a Dask cluster.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable

import numpy as np

from puyu_jax.data import text as T
from puyu_jax.data.config import (
    ExtractConfig,
    LangIdConfig,
    NormalizeConfig,
    PiiConfig,
    ProcessConfig,
    RulesConfig,
)

# ---------------------------------------------------------------------------
# extract


def extract_html(doc: dict, cfg: ExtractConfig) -> str | None:
    """Replace HTML in ``doc["html"]`` by its main text (trafilatura); plain docs pass."""
    html = doc.pop("html", None)
    if html is None:
        return None
    import trafilatura

    out = trafilatura.extract(
        html,
        include_tables=cfg.include_tables,
        include_comments=cfg.include_comments,
        favor_precision=cfg.favor_precision,
        deduplicate=False,
    )
    if not out or not out.strip():
        return "no_main_text"
    doc["text"] = out
    return None


# ---------------------------------------------------------------------------
# normalize

_SPACES_RE = re.compile(r"[ \t\u00a0\u3000]+\n")
_BLANKS_RE = re.compile(r"\n{3,}")


def normalize(doc: dict, cfg: NormalizeConfig) -> str | None:
    """ftfy repair (mojibake, bad escapes, control chars), Unicode normal form, whitespace."""
    import ftfy

    text = ftfy.fix_text(
        doc["text"],
        normalization=cfg.unicode_form or None,
        fix_character_width=cfg.fix_character_width,
        uncurl_quotes=cfg.uncurl_quotes,
    )
    text = unicodedata.normalize(cfg.unicode_form, text) if cfg.unicode_form else text
    text = _SPACES_RE.sub("\n", text.replace("\r\n", "\n").replace("\r", "\n"))
    if cfg.collapse_blank_lines:
        text = _BLANKS_RE.sub("\n\n", text)
    text = text.strip()
    if not text:
        return "empty"
    doc["text"] = text
    return None


# ---------------------------------------------------------------------------
# language id


@functools.cache
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


#: Chinese languages and varieties (ISO 639-3, BCP 47 and common tags): one macro-language `zh`.
#: Literary Chinese (lzh), Cantonese (yue), Wu (wuu), Min, Hakka, Gan, Xiang ... written in Han characters,
#: simplified or traditional, are all kept where `zh` is kept.
CHINESE = frozenset({
    "zh", "zho", "chi", "cmn", "lzh", "och", "ltc", "yue", "wuu", "gan", "hak", "hsn", "nan", "cdo", "cjy", "cpx", "czh",
    "czo", "mnp", "zh-hans", "zh-hant", "zh-cn", "zh-tw", "zh-hk", "zh-mo", "zh-sg", "zh-yue", "zh-classical",
    "zh-min-nan", "zh-wuu",
})


def macro_language(code: str) -> str:
    """The macro-language of a language code: every Chinese variety is ``zh``; others as given (lower case)."""
    c = code.strip().lower().replace("_", "-")
    return "zh" if c in CHINESE or c.startswith(("zh-", "cmn-", "yue-", "lzh-")) else c


def detect_language(text: str, max_chars: int = 2000) -> tuple[str, float, str]:
    """(macro-language, its probability, the most likely variety) from py3langid's shipped model.

    The macro-language's probability sums its varieties: a Tang poem that the model splits
    between zh, yue (Cantonese) and wuu (Wu) is confidently Chinese.
    """
    ranked = _identifier().rank(text[:max_chars])
    totals: dict[str, float] = {}
    for code, p in ranked:
        m = macro_language(code)
        totals[m] = totals.get(m, 0.0) + float(p)
    lang = max(totals, key=totals.get)
    variety = next(code for code, _ in ranked if macro_language(code) == lang)
    return lang, totals[lang], variety


def langid(doc: dict, cfg: LangIdConfig) -> str | None:
    """Set ``doc["lang"]`` (macro-language) / ``doc["lang_score"]`` (and ``doc["lang_variety"]`` when it differs,
    e.g. ``yue``); drop languages outside `cfg.keep` (where ``zh`` keeps every Chinese variety)."""
    lang, score, variety = detect_language(doc["text"], cfg.max_chars)
    doc["lang"], doc["lang_score"] = lang, round(score, 4)
    if variety != lang:
        doc["lang_variety"] = variety
    if cfg.keep and lang not in {macro_language(k) for k in cfg.keep} and variety not in cfg.keep:
        return f"lang_{lang}"
    if score < cfg.min_score:
        return "low_lang_score"
    return None


# ---------------------------------------------------------------------------
# rule filters (Gopher quality + repetition, C4)

# Gopher's stop-word rule is for alphabetic text: Chinese (above all classical prose and poetry) has no
# function words every document must contain, so the rule is skipped for CJK text.
STOP_WORDS = frozenset("the be to of and that have with a in is it for on as was are this you not but".split())
BULLETS = ("•", "●", "○", "■", "□", "▪", "▫", "‣", "⁃", "◦", "-", "*", "·")
ELLIPSES = ("...", "…")
TERMINAL_PUNCT = (".", "!", "?", '"', "'", "”", "’", "。", "！", "？", "」", "』", "”", ")", "）", "：", ":")


def rule_filter(doc: dict, cfg: RulesConfig) -> str | None:
    """Gopher and C4 rules; the reason names the first rule that failed."""
    text = doc["text"]
    ws = T.words(text)
    n = len(ws)
    cjk = T.cjk_fraction(ws) > 0.3
    # every CJK character is a word: a quatrain is 20-28, a saying of the Analects often under 20
    min_words = cfg.min_cjk_chars if cjk else cfg.min_words
    if min_words and n < min_words:
        return "too_few_words"
    if cfg.max_words and n > cfg.max_words:
        return "too_many_words"
    if not cjk:
        mean_len = sum(map(len, ws)) / n
        if cfg.min_mean_word_len and mean_len < cfg.min_mean_word_len:
            return "mean_word_len_low"
        if cfg.max_mean_word_len and mean_len > cfg.max_mean_word_len:
            return "mean_word_len_high"
    if cfg.max_symbol_word_ratio:
        symbols = text.count("#") + text.count("...") + text.count("…")
        if symbols / n > cfg.max_symbol_word_ratio:
            return "symbol_word_ratio"
    ls = T.lines(text)
    if ls and cfg.max_bullet_lines_frac < 1 and sum(l.startswith(BULLETS) for l in ls) / len(ls) > cfg.max_bullet_lines_frac:
        return "bullet_lines"
    if ls and cfg.max_ellipsis_lines_frac < 1 and sum(l.endswith(ELLIPSES) for l in ls) / len(ls) > cfg.max_ellipsis_lines_frac:
        return "ellipsis_lines"
    if cfg.min_alpha_words_frac:
        alpha = sum(1 for w in ws if not w.isdigit())
        if alpha / n < cfg.min_alpha_words_frac:
            return "alpha_words_frac"
    if cfg.min_stop_words and not cjk:
        present = {w.lower() for w in ws} & STOP_WORDS
        if len(present) < cfg.min_stop_words:
            return "stop_words"
    if cfg.drop_lorem_ipsum and "lorem ipsum" in text.lower():
        return "lorem_ipsum"
    if cfg.drop_curly_brace and "{" in text:
        return "curly_brace"
    if cfg.min_terminal_punct_lines_frac and ls:
        if sum(l.endswith(TERMINAL_PUNCT) for l in ls) / len(ls) < cfg.min_terminal_punct_lines_frac:
            return "terminal_punct_lines"
    # repetition
    line_frac, line_chars = T.dup_stats(ls)
    if cfg.max_dup_line_frac and line_frac > cfg.max_dup_line_frac:
        return "dup_lines"
    if cfg.max_dup_line_char_frac and line_chars > cfg.max_dup_line_char_frac:
        return "dup_line_chars"
    para_frac, para_chars = T.dup_stats(T.paragraphs(text))
    if cfg.max_dup_para_frac and para_frac > cfg.max_dup_para_frac:
        return "dup_paragraphs"
    if cfg.max_dup_para_char_frac and para_chars > cfg.max_dup_para_char_frac:
        return "dup_paragraph_chars"
    if n < cfg.min_words:
        # n-gram repetition fractions are defined on Gopher-length texts (min_words): on a 20-character quatrain
        # or saying one repeated phrase is a large fraction. Only short CJK texts get here.
        return None
    ids = T.word_ids(ws)
    wlen = np.fromiter(map(len, ws), dtype=np.int64, count=n)
    scale = cfg.cjk_ngram_scale if cjk else 1
    for n_, limit in zip((2, 3, 4), cfg.max_top_ngram_char_frac):
        if limit and T.top_ngram_char_frac(ids, wlen, n_ * scale) > limit:
            return f"top_{n_}gram"
    for n_, limit in zip(range(5, 11), cfg.max_dup_ngram_char_frac):
        if limit and T.dup_ngram_char_frac(ids, wlen, n_ * scale) > limit:
            return f"dup_{n_}gram"
    return None


# ---------------------------------------------------------------------------
# PII

EMAIL_RE = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
IPV4_RE = re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b")
IPV6_RE = re.compile(r"\b(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\b")
# international (+CC ...), North-American (xxx) xxx-xxxx / xxx-xxx-xxxx, Chinese mobile 1[3-9]x xxxx xxxx
PHONE_RE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}[\s.-]?(?:\(?\d{1,4}\)?[\s.-]?){2,4}\d{2,4}"
    r"|\(\d{3}\)\s?\d{3}[\s.-]\d{4}"
    r"|\d{3}[.-]\d{3}[.-]\d{4}"
    r"|1[3-9]\d[\s-]?\d{4}[\s-]?\d{4}"
    r")(?!\w)"
)


def mask_pii(text: str, cfg: PiiConfig) -> tuple[str, dict[str, int]]:
    """`text` with e-mails, IP addresses and phone numbers replaced by tokens, and counts."""
    counts = {}
    for on, rx, tok, name in (
        (cfg.email, EMAIL_RE, cfg.email_token, "email"),
        (cfg.ip, IPV6_RE, cfg.ip_token, "ip"),
        (cfg.ip, IPV4_RE, cfg.ip_token, "ip"),
        (cfg.phone, PHONE_RE, cfg.phone_token, "phone"),
    ):
        if on:
            text, k = rx.subn(tok, text)
            if k:
                counts[name] = counts.get(name, 0) + k
    return text, counts


def pii(doc: dict, cfg: PiiConfig) -> str | None:
    """Mask PII in place; records per-kind counts in ``doc["pii"]`` when any were found."""
    doc["text"], counts = mask_pii(doc["text"], cfg)
    if counts:
        doc["pii"] = counts
    return None


# ---------------------------------------------------------------------------
# the per-document pipeline


class DocPipeline:
    """The configured per-document stages, in order; picklable (builds lazily)."""

    def __init__(self, cfg: ProcessConfig):
        self.cfg = cfg
        self._quality = None

    def _stage_fn(self, name: str) -> Callable[[dict], str | None]:
        c = self.cfg
        if name == "extract":
            return lambda d: extract_html(d, c.extract)
        if name == "normalize":
            return lambda d: normalize(d, c.normalize)
        if name == "langid":
            return lambda d: langid(d, c.langid)
        if name == "rules":
            return lambda d: rule_filter(d, c.rules)
        if name == "quality":
            from puyu_jax.data.quality import quality_filter, scorer_for

            scorer = scorer_for(c.quality)
            return lambda d: quality_filter(d, c.quality, scorer)
        if name == "pii":
            return lambda d: pii(d, c.pii)
        raise ValueError(f"unknown stage {name!r}")

    @functools.cached_property
    def fns(self) -> list[tuple[str, Callable[[dict], str | None]]]:
        return [(s, self._stage_fn(s)) for s in self.cfg.stages]

    def __getstate__(self):
        return {"cfg": self.cfg, "_quality": None}

    def __call__(self, doc: dict) -> tuple[str, str] | None:
        """Run the stages on `doc` in place; None if kept, else (stage, reason)."""
        if "html" in doc and "extract" not in self.cfg.stages:
            return ("extract", "html_without_extract_stage")
        for name, fn in self.fns:
            reason = fn(doc)
            if reason is not None:
                return name, reason
        return None
