"""Per-document stages on real text: language id, normalization, rules, quality, PII."""

from conftest import FIXTURES, read_jsonl

from puyu_jax.data import text as T
from puyu_jax.data.config import NormalizeConfig, PiiConfig, QualityConfig, RulesConfig
from puyu_jax.data.quality import scorer_for
from puyu_jax.data.stages import detect_language, extract_html, mask_pii, normalize, rule_filter


def test_language_id_en_zh_de():
    rows = read_jsonl(FIXTURES / "langid.jsonl")
    assert {r["lang"] for r in rows} == {"en", "zh", "de"}
    for r in rows:
        assert detect_language(r["text"])[0] == r["lang"], r["text"][:60]


def test_words_count_cjk_characters():
    assert T.words("床前明月光, hello world") == ["床", "前", "明", "月", "光", "hello", "world"]
    assert T.cjk_fraction(T.words("举头望明月")) == 1.0


def test_normalize_repairs_mojibake_and_keeps_chinese_punctuation():
    doc = {"text": "The caf\u00c3\u00a9 is  \r\n\r\n\r\n\r\nopen.  \n子曰：“学而时习之，不亦说乎？”"}
    assert normalize(doc, NormalizeConfig()) is None
    assert doc["text"] == "The café is\n\nopen.\n子曰：“学而时习之，不亦说乎？”"
    assert normalize({"text": "  \n "}, NormalizeConfig()) == "empty"


def test_extract_html_keeps_article_drops_navigation():
    doc = {"html": (FIXTURES / "article.html").read_text(encoding="utf-8")}
    assert extract_html(doc, __import__("puyu_jax.data.config", fromlist=["x"]).ExtractConfig()) is None
    assert "Achilles" in doc["text"] and "Trojan War" in doc["text"]
    assert "All rights reserved" not in doc["text"] and "About us" not in doc["text"]


def test_rules_keep_real_prose_poetry_and_drop_junk():
    cfg = RulesConfig()
    for name in ("tang_poems.jsonl", "lunyu.jsonl"):
        for r in read_jsonl(FIXTURES / name):
            assert rule_filter({"text": r["text"]}, cfg) is None, (r["id"], rule_filter({"text": r["text"]}, cfg))
    good = read_jsonl(FIXTURES / "c4_sample.jsonl")[0]["text"]
    assert rule_filter({"text": good}, cfg) is None
    assert rule_filter({"text": "too short to be a document"}, cfg) == "too_few_words"
    spam = "\n".join(["Buy cheap watches online today and save with the best deals."] * 30)
    assert rule_filter({"text": spam}, cfg) == "dup_lines"
    bullets = "\n".join(f"• item {i} is one of the best and cheapest deals {i * 7}" for i in range(40))
    assert rule_filter({"text": bullets}, cfg) == "bullet_lines"
    hashtags = " ".join(f"#tag{i} is the word and" for i in range(60))
    assert rule_filter({"text": hashtags}, cfg) == "symbol_word_ratio"
    no_stop = " ".join(f"product{i} specification sheet download" for i in range(20))
    assert rule_filter({"text": no_stop}, cfg) == "stop_words"


def test_quality_scores_real_text_below_junk():
    lm = scorer_for(QualityConfig())
    cfg = QualityConfig()
    for r in read_jsonl(FIXTURES / "c4_sample.jsonl")[:20]:
        assert lm.perplexity(r["text"]) < cfg.max_ppl["en"]
    junk = "xq7 zzkw vbnq 8fj2 qpwx jjkl mmzx 77qz xkcd pwqz lkjh " * 20
    assert lm.perplexity(junk) > cfg.max_ppl["en"]
    poem = read_jsonl(FIXTURES / "tang_poems.jsonl")[0]["text"]
    assert lm.perplexity(poem) < cfg.max_ppl["zh"]
    shuffled = "".join(sorted(poem))  # same characters, no language
    assert lm.perplexity(shuffled) > 2 * lm.perplexity(poem)


def test_pii_masking():
    text = ("Mail jane.doe@example.com or call (555) 123-4567 / +44 20 7946 0958, "
            "手机 138 1234 5678; server 192.168.1.20 and fe80:0:0:0:202:b3ff:fe1e:8329. Version 1.2.3 stays.")
    out, counts = mask_pii(text, PiiConfig())
    assert "jane.doe" not in out and "123-4567" not in out and "7946" not in out and "1234 5678" not in out
    assert "192.168" not in out and "fe80" not in out
    assert "Version 1.2.3 stays." in out
    assert counts == {"email": 1, "ip": 2, "phone": 3}
