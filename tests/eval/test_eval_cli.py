"""`puyu eval --model MODEL_OR_URL --datasets a,b --limit N --num-fewshot K --batch-size B`
without a config file, the check backends from the command line, and the origin table layout."""

import json
from pathlib import Path

import pytest

from puyu_jax.cli import main
from puyu_jax.eval.cli import model_entry


def _results(out_dir: Path) -> dict:
    run = sorted(p for p in out_dir.iterdir() if p.name != "cache")[-1]
    return {p.stem: json.loads(p.read_text()) for p in (run / "results").rglob("*.json")}, run


def test_flags_without_a_config(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["eval", "--model", "gold", "--datasets", "arc_e,piqa,gsm8k", "--limit", "4", "--num-fewshot", "2",
                 "--batch-size", "3", "--out-dir", str(out), "-q"]) == 0
    table = capsys.readouterr().out
    assert "| ARC-e | 学科 | acc | 100.00 |" in table and "| PIQA | 推理 | acc | 100.00 |" in table
    res, run = _results(out)
    assert {r["num_samples"] for r in res.values()} == {4}
    cfg = (run / "configs" / "config.yaml").read_text()
    assert "max_samples=4" in cfg and "prompt.few_shot.ids=[0,1]" in cfg and "batch_size: 3" in cfg
    preds = json.loads((run / "predictions" / "gold" / "ARC-e.json").read_text())
    assert preds[0]["prompt"].count("Question:") == 3  # two examples from the dev split, then the item
    # constant: the first option on every tie, so chance-level accuracy
    assert main(["eval", "--model", "constant", "--datasets", "piqa", "--limit", "30", "--out-dir", str(out),
                 "-q"]) == 0
    res, _ = _results(out)
    assert 20 <= res["PIQA"]["score"] <= 80
    assert res["PIQA"]["metrics"]["acc"] == pytest.approx(res["PIQA"]["score"], abs=1e-3)


def test_model_entries():
    assert model_entry("http://127.0.0.1:9/v1") == {"abbr": "server", "type": "openai", "url": "http://127.0.0.1:9/v1"}
    assert model_entry("constant:B", 4) == {"abbr": "constant", "type": "constant", "path": "B", "batch_size": 4}
    assert model_entry("/ckpt/my-model/")["abbr"] == "my-model"


def test_origin_table_layout(tmp_path, capsys):
    assert main(["eval", "configs/eval/origin-table.yaml", "--model", "gold", "--limit", "3",
                 "--out-dir", str(tmp_path), "-q"]) == 0
    rows = [line.split(" | ")[0].lstrip("| ") for line in capsys.readouterr().out.splitlines()[2:]]
    assert rows == ["MMLU", "C-Eval", "AGI-Eval", "综合考试 average", "BoolQ", "TriviaQA", "NaturalQuestions",
                    "知识问答 average", "CMRC2018", "CSL", "RACE-middle", "XSum", "阅读理解 average", "WinoGrande", "BBH",
                    "GSM8K", "PIQA", "推理 average", "HumanEval", "MBPP", "编程 average"]
    res, run = _results(tmp_path)
    assert all(r["score"] == 100.0 for r in res.values())
    assert (run / "summary" / "Coding.png").exists() and (run / "summary" / "Reading-comprehension.png").exists()


@pytest.mark.parametrize("bad,match", [
    (["--limit", "x"], "invalid int value"),
])
def test_bad_flags(bad, match, capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--model", "gold", "--datasets", "arc-e", *bad])
    assert match in capsys.readouterr().err
