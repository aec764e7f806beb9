"""Postprocessors and evaluators: option / number extraction, CMRC2018 EM and F1, HumanEval in the sandbox."""

import pytest

from puyu_jax.eval.config import EvaluatorConfig
from puyu_jax.eval.evaluators import cmrc_em, cmrc_f1, humaneval, humaneval_program, mixed_segmentation
from puyu_jax.eval.judge import extract_rating
from puyu_jax.eval.postprocess import cmrc, code_block, first_option, last_number


@pytest.mark.parametrize("text,want", [
    ("The answer is (C).", "C"), ("答案是B", "B"), ("B. Paris", "B"), ("D", "D"),
    ("I think it is A because", "A"), ("none of these", ""),
])
def test_first_option(text, want):
    assert first_option(text) == want


@pytest.mark.parametrize("text,want", [
    ("16 - 3 - 4 = 9 eggs, 9 * 2 = 18. The answer is 18.", "18"), ("#### 1,200", "1200"),
    ("She has 5 apples and buys 7 more: 12\n\nQuestion: next 99", "12"), ("no number", ""),
    ("The answer is $-3.5.", "-3.5"),
])
def test_gsm8k_extraction(text, want):
    assert last_number(text) == want


def test_cmrc_official_rules():
    # character-level for Chinese, words for Latin runs, punctuation dropped
    # (as in the official script, a dropped "-" joins the Latin run around it)
    assert mixed_segmentation("光荣和ω-force，", rm_punc=True) == ["光", "荣", "和", "ωforce"]
    assert mixed_segmentation("GPT 4 模型") == ["gpt", "4", "模", "型"]
    assert cmrc_em("《战国无双3》", ["战国无双3"]) == 1.0
    assert cmrc_em("光荣", ["光荣和ω-force"]) == 0.0
    # F1 over the longest common contiguous run: "光荣" (2 of 2 predicted, 2 of 4 gold segments)
    assert cmrc_f1("光荣", ["光荣和ω-force"]) == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert cmrc_f1("村雨城", ["无关", "村雨城"]) == 1.0
    assert cmrc("答案是村雨城。\n更多解释") == "村雨城"
    assert cmrc("\n 光荣和ω-force \n") == "光荣和ω-force"


def test_code_block_and_program():
    assert code_block("Sure:\n```python\ndef f():\n    return 1\n```\nDone") == "def f():\n    return 1\n"
    row = {"prompt": "import math\n\ndef f(x):\n    \"\"\"doc\"\"\"\n", "entry_point": "f",
           "test": "def check(c):\n    assert c(4) == 2.0\n"}
    body = humaneval_program(row, "    return math.sqrt(x)\n")
    assert body.startswith(row["prompt"]) and body.rstrip().endswith("check(f)")
    full = humaneval_program(row, "def f(x):\n    return math.sqrt(x)\n")
    assert full.startswith("import math\n") and full.count("def f(") == 1


def test_humaneval_sandbox_limits():
    """Right code passes; wrong answers, endless loops, memory bombs, network and file escapes fail."""
    row = {"prompt": "def f(x):\n", "entry_point": "f", "test": "def check(c):\n    assert c(2) == 4\n"}
    completions = [
        "    return x * 2\n",                                   # passes
        "    return x + 3\n",                                   # wrong
        "    while True:\n        pass\n",                      # time limit
        "    a = bytearray(4 << 30)\n    return 4\n",           # memory limit
        "    import socket\n    socket.create_connection(('1.1.1.1', 80))\n    return 4\n",  # no network
        "    open('/tmp/puyu_eval_escape', 'w').write('x')\n    return 4\n",               # no writes outside
    ]
    cfg = EvaluatorConfig(type="humaneval", timeout_s=3, memory_mb=512, workers=2)
    res = humaneval([row] * len(completions), [{"pred": c, "gold": ""} for c in completions], cfg)
    assert res["correct"] == [True, False, False, False, False, False]
    assert res["score"] == pytest.approx(100 / 6)


def test_judge_rating_extraction():
    assert extract_rating("good answer. Rating: [[8]]") == 8.0
    assert extract_rating("Rating: [7.5]") == 7.5
    assert extract_rating("no rating here") == -1.0


@pytest.mark.parametrize("text,want", [
    ("Let's see. So the answer is (B).", "(B)"), ("(A)", "(A)"), ("So the answer is True.", "True"),
    ("So the answer is valid.\nQ: next", "valid"), ("So the answer is 12/14/1937.", "12/14/1937"),
    ("So the answer is C.", "(C)"), ("no marker here", "no marker here"),
])
def test_bbh_answer(text, want):
    from puyu_jax.eval.postprocess import bbh_answer

    assert bbh_answer(text) == want


def test_mbpp_code_extraction():
    from puyu_jax.eval.postprocess import mbpp_code

    assert mbpp_code("'def f(x):\n    return x'\n[DONE]") == "def f(x):\n    return x"
    assert mbpp_code("[BEGIN]\n```python\ndef f():\n    return 1\n```\n[DONE] trailing") == "def f():\n    return 1"
    assert mbpp_code("def f():\r\n  return 1") == "def f():\r\n  return 1"


@pytest.mark.parametrize("text,want", [
    (r"so $x = \boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
    (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),
    ("The answer is $5$.", "5"), ("just 42", "just 42"),
])
def test_math_answer(text, want):
    from puyu_jax.eval.postprocess import math_answer

    assert math_answer(text) == want


@pytest.mark.parametrize("a,b,same", [
    (r"\dfrac{1}{2}", "0.5", True), (r"\frac12", r"\frac{1}{2}", True), (r"10\%", "10", True),
    (r"\text{Evelyn}", "Evelyn", True), ("1,000", "1000", True), (r"90^\circ", "90", True), ("x = 3", "3", True),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})", True), ("3", "4", False),
    (r"\frac{1}{3}", "0.33", False),
])
def test_math_equivalence(a, b, same):
    from puyu_jax.eval.evaluators import math_equal

    assert math_equal(a, b) is same


def test_open_qa_and_rouge():
    from puyu_jax.eval.evaluators import normalize_answer, qa_em, rouge

    assert normalize_answer("The  Allstars!") == "allstars"
    rows = [{"aliases": ["The Allstars", "AllSTARS"]}, {"aliases": ["Black Sea"]}]
    preds = [{"pred": "allstars.", "gold": "The Allstars"}, {"pred": "the Red Sea", "gold": "Black Sea"}]
    res = qa_em(rows, preds, EvaluatorConfig(type="qa_em", answers_column="aliases"))
    assert res["correct"] == [True, False] and res["score"] == 50.0 and res["metrics"]["f1"] == pytest.approx(75.0)
    out = rouge([{}, {}], [{"pred": "the cat sat on the mat", "gold": "the cat sat on the mat"},
                           {"pred": "dogs bark", "gold": "the cat sat on the mat"}], EvaluatorConfig(type="rouge"))
    assert out["metrics"]["rouge1"] == pytest.approx(50.0) and out["correct"] == [True, False]
    assert out["metric"] == "rougeL" and out["per_sample"][1]["rouge2"] == 0.0
