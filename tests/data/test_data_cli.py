"""`puyu data` subcommands, through a parser built the way cli.py builds it."""

import argparse
import json

from conftest import FIXTURES

from puyu_jax.config import load_config
from puyu_jax.data.cli import add_parser
from puyu_jax.data.config import ProcessConfig, TokenizeConfig


def _parser():
    p = argparse.ArgumentParser(prog="puyu")
    sub = p.add_subparsers(dest="command", required=True)
    add_parser(sub)
    return p


def test_help_texts():
    p = _parser()
    for cmd in ("process", "tokenize", "report"):
        text = p._subparsers._group_actions[0].choices["data"]._subparsers._group_actions[0].choices[cmd].format_help()
        assert "usage" in text and len(text) > 200


def test_shipped_yaml_configs_load():
    load_config(ProcessConfig, "configs/data/process.yaml")
    load_config(TokenizeConfig, "configs/data/tokenize.yaml")


def test_process_tokenize_report_commands(tmp_path, capsys):
    p = _parser()
    out, packed = tmp_path / "clean", tmp_path / "packed"
    args = p.parse_args(["data", "process", "configs/data/process.yaml",
                         f"input.paths=[{FIXTURES / 'c4_sample.jsonl'},{FIXTURES / 'article.html'}]",
                         "-j", "1", "-o", str(out), "--no-progress"])
    assert args.fn(args) == 0
    assert "kept" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["kept"] > 50
    args = p.parse_args(["data", "tokenize", "configs/data/tokenize.yaml", f"inputs=[{out}]", "seq_len=256", "-o", str(packed)])
    assert args.fn(args) == 0
    index = json.loads((packed / "index.json").read_text())
    assert index["num_documents"] == report["kept"] and index["seq_len"] == 256
    args = p.parse_args(["data", "report", str(out)])
    assert args.fn(args) == 0
    assert "Drops by stage" in capsys.readouterr().out
