"""The `puyu` CLI: help texts, model info, errors that name the key, convert + generate end to end."""

import json
import os
import subprocess
import sys

import pytest

from puyu_jax.cli import build_parser, main


def test_help_texts_read_well():
    out = subprocess.run([sys.executable, "-m", "puyu_jax.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("model", "convert", "generate", "sweep", "Examples:"):
        assert cmd in out
    parser = build_parser()
    for argv in (["model", "info", "--help"], ["convert", "--help"], ["generate", "--help"], ["sweep", "--help"]):
        with pytest.raises(SystemExit) as e:
            parser.parse_args(argv)
        assert e.value.code == 0


def test_model_info_prints_published_size(capsys):
    assert main(["model", "info", "internlm2-7b"]) == 0
    out = capsys.readouterr().out
    assert "7,737,708,544" in out and "GQA: 32 query / 8 kv heads" in out
    assert main(["model", "info", "tiny", "num_layers=4"]) == 0
    assert "│ layers" in capsys.readouterr().out


def test_bad_keys_and_sources_are_clear_errors(capsys):
    assert main(["generate", "tiny", "sampling.temprature=0.5"]) == 2
    err = capsys.readouterr().err
    assert "sampling.temprature" in err and "temperature" in err
    assert main(["model", "info", "no-such-model"]) == 2
    assert "no model at 'no-such-model'" in capsys.readouterr().err


def test_convert_then_generate_streams_an_answer(tmp_path, capsys):
    ckpt = tmp_path / "smollm2"
    assert main(["convert", "smollm2", str(ckpt), "--to", "puyu"]) == 0
    assert (ckpt / "model.yaml").exists() and (ckpt / "tokenizer").is_dir()
    out_dir = tmp_path / "gen"
    assert main(["generate", str(ckpt), "-p", "What is the capital of France?", "-n", "16", "--out", str(out_dir)]) == 0
    assert "Paris" in capsys.readouterr().out
    record = json.loads((out_dir / "outputs.jsonl").read_text().splitlines()[0])
    assert "Paris" in record["text"]
    assert (out_dir / "config.yaml").exists() and len((out_dir / "config.hash").read_text().strip()) == 12


def test_configs_list_and_copy(tmp_path, capsys):
    assert main(["configs", "list", "pretrain"]) == 0
    out = capsys.readouterr().out
    assert "pretrain/tiny-shakespeare" in out and "models/" not in out
    assert main(["configs", "copy", "tiny-shakespeare", str(tmp_path)]) == 0
    from puyu_jax.config import load_config
    from puyu_jax.train.config import TrainConfig

    assert load_config(TrainConfig, tmp_path / "tiny-shakespeare.yaml").steps > 0
    assert main(["configs", "copy", "no-such-config", str(tmp_path)]) == 2


def test_compile_cache_is_on_by_default_and_can_be_turned_off(tmp_path):
    from puyu_jax.cli import use_compile_cache

    env = {"PUYU_COMPILE_CACHE": str(tmp_path / "xla")}
    assert use_compile_cache(env) == str(tmp_path / "xla")
    assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "xla") and int(env["JAX_COMPILATION_CACHE_MAX_SIZE"]) > 0
    assert use_compile_cache({"JAX_COMPILATION_CACHE_DIR": "/elsewhere"}) == "/elsewhere"  # an explicit one wins
    off = {"PUYU_COMPILE_CACHE": "none"}
    assert use_compile_cache(off) is None and "JAX_COMPILATION_CACHE_DIR" not in off


@pytest.mark.slow  # two processes load SmolLM2
def test_a_second_run_reads_its_programs_from_the_compile_cache(tmp_path):
    """Two `puyu generate` processes on one cache directory: the second compiles nothing it can read back."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env.update(PUYU_COMPILE_CACHE=str(tmp_path / "xla"), JAX_LOG_COMPILES="1")
    cmd = [sys.executable, "-m", "puyu_jax.cli", "generate", "smollm2", "-p", "Hello", "-n", "3"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    assert any((tmp_path / "xla").iterdir())
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "Persistent compilation cache hit" in second.stderr
    assert first.stdout == second.stdout
