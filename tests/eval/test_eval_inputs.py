"""Errors before work: malformed lines named by file and line (counted, or fatal with
loader.strict), CSV / TSV delimiters, and columns and template fields checked against the first
rows before any model loads; every error one line on stderr, exit status 2."""

import json

import pytest
import yaml

import puyu_jax.eval.backends as backends
from puyu_jax.cli import main
from puyu_jax.eval import load_dataset, load_dataset_config
from puyu_jax.eval.config import DatasetError
from puyu_jax.eval.datasets import validate_dataset


def _dataset(tmp_path, rows_text: str, name="data.jsonl", **cfg) -> str:
    (tmp_path / "d").mkdir(exist_ok=True)
    (tmp_path / "d" / name).write_text(rows_text, encoding="utf-8")
    base = {"name": "mine", "loader": {"type": "jsonl", "path": str(tmp_path / "d"), "test": name},
            "reader": {"input_columns": ["question"], "output_column": "answer"},
            "prompt": {"template": "Q: {question}\nA:"}, "inferencer": {"type": "gen", "max_out_len": 8}}
    for k, v in cfg.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(base, allow_unicode=True))
    return str(path)


def test_bad_jsonl_lines_are_named_and_counted(tmp_path):
    good = [json.dumps({"question": f"q{i}", "answer": "a"}) for i in range(4)]
    text = "\n".join([good[0], '{"question": "broken", ', good[1], "[1, 2]", good[2], "", good[3]]) + "\n"
    path = _dataset(tmp_path, text)
    ds = load_dataset(load_dataset_config(path))
    assert len(ds.test) == 4 and len(ds.skipped) == 2
    assert ds.skipped[0].endswith("data.jsonl:2: invalid JSON (Expecting property name enclosed in double quotes "
                                  "at column 24)") or "data.jsonl:2: invalid JSON" in ds.skipped[0]
    assert "data.jsonl:4: expected a JSON object, got list" in ds.skipped[1]
    with pytest.raises(DatasetError, match=r"malformed record at .*data\.jsonl:2: invalid JSON .*loader\.strict"):
        load_dataset(load_dataset_config(path, ["loader.strict=true"]))


def test_csv_and_tsv_delimiters(tmp_path):
    tsv = "question\tanswer\nWhat, exactly?\tyes\nWhy\tno\n"
    ds = load_dataset(load_dataset_config(_dataset(tmp_path, tsv, "t.tsv", loader={"type": "csv", "test": "t.tsv"})))
    assert [r["question"] for r in ds.test] == ["What, exactly?", "Why"]  # .tsv: tab by default
    semi = "question;answer\nA, b;yes\nC;no;extra\n"
    path = _dataset(tmp_path, semi, "s.csv", loader={"type": "csv", "test": "s.csv", "delimiter": ";"})
    ds = load_dataset(load_dataset_config(path))
    assert [r["question"] for r in ds.test] == ["A, b"]
    assert ds.skipped == [f"{tmp_path / 'd' / 's.csv'}:3: 3 fields, the header has 2 "
                          "(delimiter ';'; set loader.delimiter?)"]
    # a TSV read with commas: every row has the wrong width, and the reader column is missing
    path = _dataset(tmp_path, tsv, "t.csv", loader={"type": "csv", "test": "t.csv", "delimiter": ","})
    with pytest.raises(DatasetError, match=r"'question' is not a column .* is loader\.delimiter right\?"):
        load_dataset(load_dataset_config(path))


@pytest.mark.parametrize("change,match", [
    ({"reader": {"input_columns": ["questoin"]}}, r"reader\.input_columns\[0\]='questoin' is not a column of .* "
                                                  r"\(columns: answer, question\)"),
    ({"prompt": {"template": "Q: {query}"}}, r"dataset 'mine': prompt\.template 'Q: \{query\}' uses column 'query', "
                                             r"which the rows lack \(columns: answer, question\)"),
    ({"reader": {"output_column": "label"}}, r"reader\.output_column='label' is not a column"),
    ({"inferencer": {"type": "ppl"}, "prompt": {"continuations": {"A": " A", "B": " B"}}},
     r"row 0 has gold answer 'a' \(reader\.output_column='answer'\), not one of the option labels \['A', 'B'\]"),
])
def test_config_errors_before_any_model_loads(tmp_path, capsys, monkeypatch, change, match):
    path = _dataset(tmp_path, json.dumps({"question": "q", "answer": "a"}) + "\n", **change)
    with pytest.raises(DatasetError, match=match):
        validate_dataset(load_dataset_config(path))

    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the dataset was checked")

    monkeypatch.setattr(backends, "make_backend", no_model)
    assert main(["eval", "--model", "smollm2", "--datasets", path, "--out-dir", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("puyu: error: dataset 'mine': ")


def test_missing_files_and_unknown_names_are_one_line(tmp_path, capsys):
    assert main(["eval", "--model", "gold", "--datasets", "arc-e", "--data-root", str(tmp_path), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"puyu: error: dataset path {tmp_path / 'arc'} not found"
    assert main(["eval", "--model", "gold", "--datasets", "arc-ee", "-q"]) == 2
    assert "no dataset named 'arc-ee'; known:" in capsys.readouterr().err
    assert main(["eval", "--datasets", "arc-e"]) == 2
    assert "give an EvalConfig YAML or --model" in capsys.readouterr().err
