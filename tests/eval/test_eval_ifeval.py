"""IFEval: every instruction checker on hand-written compliant and non-compliant responses,
strict against loose verdicts, the per-instruction verdicts against lm-eval's own `ifeval` code
on varied responses, the dataset config, and the check backends (gold refuses: no references)."""

import json
import sys

import pytest

from puyu_jax.cli import main
from puyu_jax.eval import ConstantBackend, GoldBackend, evaluate, load_dataset, load_dataset_config
from puyu_jax.eval.config import DatasetError
from puyu_jax.eval.datasets import validate_dataset
from puyu_jax.eval.ifeval import INSTRUCTIONS, follows, loose_variants, score_rows

LOREM = ("The river runs through the valley and the farmers plant wheat near its banks every spring. "
         "Children walk along the path to school while the birds sing in the trees above them. ")

# (instruction id, kwargs, a response that follows it, a response that does not)
CASES = [
    ("keywords:existence", {"keywords": ["river", "wheat"]}, "The River feeds the wheat.", "The river is dry."),
    ("keywords:frequency", {"keyword": "blue", "frequency": 3, "relation": "at least"},
     "Blue sky, blue sea, BLUE eyes.", "Blue sky, blue sea."),
    ("keywords:frequency", {"keyword": "blue", "frequency": 2, "relation": "less than"},
     "A blue sky.", "Blue sky, blue sea."),
    ("keywords:forbidden_words", {"forbidden_words": ["cat", "dog"]},
     "A category of dogs-like catalogs.", "My Cat sleeps."),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 3, "let_relation": "at least"},
     "Zany zebras zoom.", "Zany cats."),
    ("keywords:letter_frequency", {"letter": "#", "let_frequency": 2, "let_relation": "at least"},
     "#fun #sun", "#fun"),
    ("language:response_language", {"language": "fr"},
     "Le chat dort sur le canapé pendant que la pluie tombe doucement dehors.",
     "The cat sleeps on the sofa while the rain falls gently outside."),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"},
     "Mr. Smith went home. He slept.", "One. Two is here. Three is there. Four."),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "at least"},
     "I met Dr. Brown. We talked.", "I met Dr. Brown at noon."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First part.\n***\nSecond part.",
     "First part.\n***\n***\nSecond part."),
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"}, "Just four words here.",
     "These are clearly more than five words."),
    ("length_constraints:number_words", {"num_words": 30, "relation": "at least"}, LOREM, "Too short."),
    ("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 3, "nth_paragraph": 2, "first_word": "however"},
     "Intro.\n\n\"However, this.\"\n\nEnd.", "Intro.\n\nBut this.\n\nEnd."),
    ("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
     "Intro.\n\nThen more.", "Intro.\n\nThen more.\n\nAnd a third."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], at [address].",
     "Dear [name], at the address."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Bye.\n\nP.S. I miss you.",
     "Bye. PS I miss you."),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Bye.\np. p. s. later", "Bye.\nP.S. later"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "Items:\n* one\n- two",
     "Items:\n* one\n* two\n* three"),
    ("detectable_format:constrained_response", {}, "My answer is maybe.", "Maybe, I think so."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and **two**",
     "*one* and ** **"),
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 2},
     "SECTION 1\nintro\nSECTION 2\nbody", "SECTION 1\nintro only"),
    ("detectable_format:json_format", {}, "```json\n{\"a\": 1}\n```", "{'a': 1}"),
    ("detectable_format:title", {}, "<<My Title>>\nText.", "<< >>\nText."),
    ("combination:two_responses", {}, "First answer.\n******\nSecond answer.",
     "Same answer.\n******\nSame answer."),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem."}, "write a poem. Roses are red.",
     "Here is a poem. Roses are red."),
    ("startend:end_checker", {"end_phrase": "Is there anything else?"}, "Done. is there anything else?\"",
     "Is there anything else? Done."),
    ("startend:quotation", {}, "  \"Wrapped in quotes.\"  ", "\"Only opened."),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "This is VERY IMPORTANT.", "This is VERY important."),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "less than"},
     "Only ONE here.", "NASA and ESA and JAXA."),
    ("change_case:english_capital", {}, "THE RIVER RUNS THROUGH THE VALLEY AND THE FARMERS PLANT WHEAT.",
     "The river runs through the valley and the farmers plant wheat."),
    ("change_case:english_lowercase", {}, "the river runs through the valley and the farmers plant wheat.",
     "The river runs through the valley and the farmers plant wheat."),
    ("punctuation:no_comma", {}, "No commas here.", "One, two."),
]


def test_every_instruction_has_cases():
    assert {c[0] for c in CASES} == set(INSTRUCTIONS)


@pytest.mark.parametrize("iid,kwargs,good,bad", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_instruction_verdicts(iid, kwargs, good, bad):
    assert follows([iid], [kwargs], good) == [True]
    assert follows([iid], [kwargs], bad) == [False]


def test_blank_response_follows_nothing_and_bad_arguments_are_named():
    assert follows(["punctuation:no_comma"], [{}], "  \n ") == [False]
    assert follows(["punctuation:no_comma"], [{}], "", loose=True) == [False]
    with pytest.raises(ValueError, match="unknown IFEval instruction id 'keywords:nope'"):
        follows(["keywords:nope"], [{}], "x")
    with pytest.raises(ValueError, match="'keywords:existence': kwargs .*do not fit"):
        follows(["keywords:existence"], [{"keyword": "x"}], "x")
    with pytest.raises(ValueError, match="relation='more than'"):
        follows(["length_constraints:number_words"], [{"num_words": 3, "relation": "more than"}], "a b c")
    with pytest.raises(ValueError, match="row key=7: IFEval instruction 'startend:end_checker': kwargs"):
        score_rows([{"key": 7, "instruction_id_list": ["startend:end_checker"], "kwargs": [{}]}], ["x"])


def test_strict_and_loose():
    # a chatty first line, markdown bold, a sign-off: strict fails, loose (lines / asterisks removed) passes
    response = "Sure! Here is the JSON:\n{\"a\": 1}\nHope this helps."
    assert follows(["detectable_format:json_format"], [{}], response) == [False]
    assert follows(["detectable_format:json_format"], [{}], response, loose=True) == [True]
    response = "**Answer**\n\"quoted answer\""
    assert follows(["startend:quotation"], [{}], response) == [False]
    assert follows(["startend:quotation"], [{}], response, loose=True) == [True]
    assert follows(["punctuation:no_comma"], [{}], "a, b\nno commas") == [False]
    assert follows(["punctuation:no_comma"], [{}], "a, b\nno commas", loose=True) == [True]
    # loose never takes a verdict away
    for iid, kw, good, bad in CASES:
        for r in (good, bad):
            assert follows([iid], [kw], r, loose=True)[0] >= follows([iid], [kw], r)[0]
    v = loose_variants("A\n*B*\nC")
    assert v == ["A\n*B*\nC", "A\nB\nC", "*B*\nC", "A\n*B*", "*B*", "B\nC", "A\nB", "B"]
    # prompt level: every instruction of the row; instruction level: all instructions pooled
    rows = [{"instruction_id_list": ["punctuation:no_comma", "detectable_format:json_format"], "kwargs": [{}, {}]},
            {"instruction_id_list": ["startend:quotation"], "kwargs": [{}]}]
    res = score_rows(rows, ["Here you go, friend:\n{\"a\": [1, 2]}\nBye, now.", "\"yes\""])
    m = res["metrics"]
    assert (m["prompt_level_strict_acc"], m["inst_level_strict_acc"]) == (50.0, pytest.approx(100 / 3))
    assert (m["prompt_level_loose_acc"], m["inst_level_loose_acc"]) == (50.0, pytest.approx(200 / 3))
    assert res["per_sample"][0] == {"instructions": rows[0]["instruction_id_list"], "strict": [False, False],
                                    "loose": [False, True]}
    assert res["correct"] == [False, True]


def test_dataset_config_and_check_backends(tmp_path, capsys):
    cfg = load_dataset_config("ifeval")
    ds = validate_dataset(cfg)
    assert len(ds.test) == 40 and cfg.inferencer.max_out_len == 1280 and cfg.prompt.meta == "chat"
    assert {i for r in ds.test for i in r["instruction_id_list"]} == set(INSTRUCTIONS)  # every kind in the subset
    # constant: the same short text for every prompt, scored by the checkers like any response
    res = evaluate(ConstantBackend("A"), cfg)
    direct = score_rows(ds.test, ["A"] * len(ds.test))
    assert res["metrics"] == direct["metrics"] and res["metric"] == "prompt_level_strict_acc"
    assert res["score"] == direct["metrics"]["prompt_level_strict_acc"] < 10
    d = res["details"][0]
    assert d["instructions"] == ds.test[0]["instruction_id_list"] and len(d["strict"]) == len(d["loose"])
    assert d["strict"][d["instructions"].index("punctuation:no_comma")] is True  # "A" has no comma ...
    assert res["metrics"]["by_instruction"]["detectable_format:title"] == 0.0  # ... and no <<title>>
    # gold: IFEval has no reference answers; refused by name, never a silent 0
    with pytest.raises(DatasetError, match="'ifeval' has no reference answers"):
        GoldBackend(ds)
    assert main(["eval", "--model", "gold", "--datasets", "ifeval", "--out-dir", str(tmp_path), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no reference answers" in err and len(err.splitlines()) == 1
    assert not any(tmp_path.rglob("predictions"))  # refused before any work


# ---------------------------------------------------------------- against lm-eval's own checkers
RESPONSES = [
    "A",
    LOREM,
    LOREM.upper(),
    LOREM.lower(),
    "\"" + LOREM.strip() + "\"",
    "Sure, here it is:\n```json\n{\"name\": \"river\", \"items\": [1, 2]}\n```",
    "<<A Title>>\n\n*highlight one* and *highlight two* and **bold three**\n\nP.S. see you.",
    "SECTION 1\nThe first part, with a [placeholder].\nSECTION 2\nThe second [part].\nSection 3 ends.",
    "Para one about rivers.\n***\nPara two about wheat.\n***\nPara three.",
    "First.\n\nSecond paragraph starts here.\n\nThird one.\n\nFourth.",
    "* apple\n* banana\n- cherry\n**not a bullet**",
    "My answer is yes. I am sure of it, really.",
    "Response one is about the sun.\n******\nResponse two is about the moon.",
    "Le chat dort sur le canapé pendant que la pluie tombe doucement dehors, et les enfants jouent.",
    "El perro corre por el parque mientras el sol brilla sobre la ciudad.",
    "Write a poem about the sea.\nThe sea is deep, the sea is wide.",
    "Mr. Smith arrived at 5 p.m. on Jan. 3rd. He left. Did he return? No! The U.S. team won.",
    "NASA, ESA and JAXA met in the U.K. The USA and the EU AGREED. OK?",
    "Dear [name],\nI am writing from [address] about [topic]. Is there anything else I can help with?",
    "Zebras zigzag; the zoo is lazy. ### Hashtags: #one #two #three #four !!!! !!",
    "p.p.s this is a late note\nand a p.s. too",
    "the quick brown fox jumps over the lazy dog near the riverbank every morning",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG NEAR THE RIVERBANK EVERY MORNING",
    "Here is my answer:\n\"Quoted at last\"\nThanks!",
    "```\n[1, 2, 3]\n```",
    "Section 1: intro. Section 2: end. SECTION 3",
    "I would say the answer is: My answer is no.",
    "\n\n   \n",
    "Title: <<>> and << spaced >> and done.",
    "Word " * 120,
    LOREM * 25,
    "Fill in: " + " ".join(f"[field {i}]" for i in range(12)),
    "PARAGRAPH 1\nOpening words.\nPARAGRAPH 2\nClosing words.",
    "SECTION 1 a\nSECTION 2 b\nSECTION 3 c\nSECTION 4 d",
    "Weekend plans are simple.\n\nWe rest.\n\nWe read.\n\nWe cook.",
]


RESPONSES_LANG = [RESPONSES[i] for i in (0, 1, 2, 3, 13, 14, 21, 22, 27)]


@pytest.fixture(scope="module")
def lm_eval_ifeval(tmp_path_factory):
    """lm-eval's ifeval utils, with NLTK's punkt_tab English model written from the same tables
    (lm-eval downloads it otherwise) and langdetect seeded as ours is."""
    pytest.importorskip("langdetect")
    pytest.importorskip("immutabledict")
    pytest.importorskip("lm_eval")
    import nltk
    from punkt.data import load_module

    model = load_module("english")
    root = tmp_path_factory.mktemp("nltk_data")
    d = root / "tokenizers" / "punkt_tab" / "english"
    d.mkdir(parents=True)
    (d / "abbrev_types.txt").write_text("".join(f"{x}\n" for x in sorted(model.ABBREV_TYPES)))
    (d / "sent_starters.txt").write_text("".join(f"{x}\n" for x in sorted(model.SENT_STARTERS)))
    (d / "collocations.tab").write_text("".join(f"{a}\t{b}\n" for a, b in sorted(model.COLLOCATIONS)))
    (d / "ortho_context.tab").write_text("".join(f"{k}\t{v}\n" for k, v in sorted(model.ORTHO_CONTEXT.items())))
    nltk.data.path.insert(0, str(root))
    from langdetect.detector_factory import DetectorFactory

    old_seed = DetectorFactory.seed
    DetectorFactory.seed = 0  # lm-eval calls langdetect.detect unseeded
    try:
        try:
            utils = __import__("lm_eval.tasks.ifeval.utils", fromlist=["utils"])
        except Exception as e:  # noqa: BLE001 - any import failure of the optional reference
            pytest.skip(f"lm_eval's ifeval module is not importable: {e}")
        yield utils
    finally:
        DetectorFactory.seed = old_seed
        nltk.data.path.remove(str(root))
        sys.modules.pop("lm_eval.tasks.ifeval.utils", None)


def test_verdicts_equal_lm_eval(lm_eval_ifeval):
    ds = load_dataset(load_dataset_config("ifeval"))
    compared, seen = 0, {}
    for row in ds.test:
        ids, kws = row["instruction_id_list"], row["kwargs"]
        # lm-eval replaces a non-letter `letter` ('#', '!') by a random letter: not comparable there
        keep = [i for i, (iid, kw) in enumerate(zip(ids, kws))
                if not (iid == "keywords:letter_frequency" and not kw["letter"].isalpha())]
        inp = lm_eval_ifeval.InputExample(key=row["key"], instruction_id_list=[ids[i] for i in keep],
                                          prompt=row["prompt"], kwargs=[kws[i] for i in keep])
        # language detection is slow (~50 ms a call): rows that need it get the responses it tells apart
        slow = any(i.startswith(("language:", "change_case:english")) for i in inp.instruction_id_list)
        for resp in [*(RESPONSES_LANG if slow else RESPONSES), row["prompt"], row["prompt"] + "\n" + LOREM]:
            for loose in (False, True):
                ours = follows(inp.instruction_id_list, inp.kwargs, resp, loose=loose)
                fn = (lm_eval_ifeval.test_instruction_following_loose if loose
                      else lm_eval_ifeval.test_instruction_following_strict)
                theirs = fn(inp, resp).follow_instruction_list
                assert ours == theirs, (inp.instruction_id_list, inp.kwargs, resp, loose)
                for iid, v in zip(inp.instruction_id_list, ours):
                    seen.setdefault(iid, set()).add(v)
                compared += len(ours)
    assert compared > 2000
    both = [iid for iid, vs in seen.items() if vs == {True, False}]
    assert len(both) >= 22, sorted(set(seen) - set(both))  # nearly every kind seen passing and failing


def test_full_set_from_data_root():
    from puyu_jax.config import REPO_ROOT

    roots = [p / "shared" / "data" / "eval" for p in (REPO_ROOT.parent, REPO_ROOT.parent.parent)]
    root = next((r for r in roots if (r / "ifeval" / "input_data.jsonl").exists()), None)
    if root is None:
        pytest.skip("shared/data/eval/ifeval is not here")
    ds = load_dataset(load_dataset_config("ifeval", data_root=str(root)))
    assert len(ds.test) == 541 and not ds.skipped
    res = score_rows(ds.test, [json.dumps({"answer": r["prompt"]}) for r in ds.test])
    assert res["metrics"]["by_instruction"]["detectable_format:json_format"] == 100.0
