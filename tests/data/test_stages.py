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


# Cantonese sentences written for this project (everyday speech in Hong Kong written Cantonese).
CANTONESE = [
    "佢哋今日去咗邊度食飯呀？我唔知道喎，你問下佢啦。",
    "我哋聽日一齊去飲茶好唔好？間茶樓啲點心好好食㗎。",
    "你做咩咁夜都未瞓覺呀？聽朝仲要返工㗎喎。",
]


def test_chinese_varieties_count_as_chinese():
    from puyu_jax.data.config import LangIdConfig
    from puyu_jax.data.stages import langid, macro_language

    assert {macro_language(c) for c in ("zh", "yue", "wuu", "lzh", "zh-Hant", "zh_TW", "cmn-Hans")} == {"zh"}
    assert macro_language("en") == "en" and macro_language("ja") == "ja"
    for text in CANTONESE:
        doc = {"text": text}
        assert langid(doc, LangIdConfig(keep=("en", "zh"))) is None, doc
        assert doc["lang"] == "zh" and doc["lang_variety"] == "yue", doc  # kept as Chinese, variety recorded
        assert langid(dict(doc), LangIdConfig(keep=("en",))) == "lang_zh"
        assert langid(dict(doc), LangIdConfig(keep=("yue",))) is None  # a variety can still be asked for alone


def test_classical_chinese_poems_and_analects_are_kept():
    """One Tang poem (traditional characters) or one saying of the Analects per document: the whole
    per-document pipeline (normalize, langid, rules, quality, pii) keeps at least 90% of each."""
    from puyu_jax.config import load_config
    from puyu_jax.data.config import ProcessConfig
    from puyu_jax.data.stages import DocPipeline

    pipe = DocPipeline(load_config(ProcessConfig, {"input": {"paths": ["unused"]}}))
    kept, reasons = {"tang300": [], "lunyu": []}, {}
    for r in read_jsonl(FIXTURES / "classical_zh.jsonl"):
        doc = {"id": r["id"], "source": "classical_zh.jsonl", "text": r["text"]}
        out = pipe(doc)
        kept[r["id"].split("-")[0]].append(out is None)
        if out is not None:
            reasons[f"{out[0]}:{out[1]}"] = reasons.get(f"{out[0]}:{out[1]}", 0) + 1
    assert len(kept["tang300"]) == 120 and len(kept["lunyu"]) == 245
    for name, flags in kept.items():
        assert sum(flags) / len(flags) >= 0.9, (name, sum(flags), len(flags), reasons)


def test_short_chinese_is_judged_by_characters_and_without_stop_words():
    cfg = RulesConfig()
    quatrain = "靜夜思\n李白\n床前明月光，疑是地上霜。\n舉頭望明月，低頭思故鄉。"
    assert rule_filter({"text": quatrain}, cfg) is None  # 24 characters, no modern function words
    assert rule_filter({"text": "首页 登录"}, cfg) == "too_few_words"  # navigation, not a text
    spam = "\n".join(["点击这里免费领取大礼包"] * 10)
    assert rule_filter({"text": spam}, cfg) == "dup_lines"
