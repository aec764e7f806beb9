"""`puyu aot`: the real train / serve steps compiled for a TPU slice on this CPU, and its errors."""

import json
import re

import pytest

from puyu_jax.aot import CHIPS, chip_for, count_collectives
from puyu_jax.cli import main

pytest.importorskip("libtpu", reason="the tpu extra (libtpu) is part of `make install`")

TINY = "configs/pretrain/tiny-shakespeare.yaml"


def test_chip_table_agrees_with_the_training_peaks():
    """One set of figures: the MFU the trainer logs and the roofline here use the same peaks."""
    from puyu_jax.train.metrics import PEAK_FLOPS

    for chip in CHIPS.values():
        for kind in chip.device_kinds:
            if kind in PEAK_FLOPS:
                assert PEAK_FLOPS[kind] == chip.peak_bf16_flops, kind
    assert chip_for("TPU v5 lite").name == "TPU v5e" and chip_for("TPU v5").name == "TPU v5p"
    with pytest.raises(KeyError, match="no spec"):
        chip_for("TPU v9000")


def test_count_collectives_reads_async_and_fused_collectives():
    hlo = """HloModule m

%all-reduce-scatter.7 (a: f32[8]) -> f32[2] {
  %all-reduce.1 = f32[8]{0} all-reduce(%a), replica_groups={}
}

ENTRY %main (p: f32[8]) -> f32[8] {
  %ag = (f32[2]{0}, f32[8]{0}) all-gather-start(%p), dimensions={0}
  %agd = f32[8]{0} all-gather-done(%ag)
  %f = (f32[2]{0}, /*index=1*/f32[2]{0}) fusion(%p), kind=kCustom, calls=%all-reduce-scatter.7
  %cp = f32[8]{0} collective-permute(%p), source_target_pairs={{0,1}}
  ROOT %ar = f32[8]{0} all-reduce(%agd), replica_groups={}
}
"""
    assert count_collectives(hlo) == {"all-reduce": 1, "all-gather": 1, "reduce-scatter": 1,
                                      "collective-permute": 1}


def test_loops_count_as_often_as_they_run():
    """XLA's cost analysis counts a while body once; the report counts nested scans (a layer scan
    inside a grad-accumulation loop) trips x trips times."""
    import jax
    import jax.numpy as jnp

    from puyu_jax.aot import Program, analyze, loop_cost, tpu_devices

    device = tpu_devices("v5e:2x2")[0]
    s = jax.sharding.SingleDeviceSharding(device)

    def f(x, w):  # 3 outer x 4 inner trips of a [256, 512] x [512, 512] matmul
        def outer(h, _):
            return jax.lax.scan(lambda h, wi: (jnp.tanh(h @ wi), None), h, w)[0], None

        return jax.lax.scan(outer, x, None, length=3)[0]

    compiled = jax.jit(f).lower(jax.ShapeDtypeStruct((256, 512), jnp.bfloat16, sharding=s),
                                jax.ShapeDtypeStruct((4, 512, 512), jnp.bfloat16, sharding=s)).compile()
    one = 2 * 256 * 512 * 512
    xla = compiled.cost_analysis()
    assert one <= xla["flops"] < 1.1 * one  # what XLA reports: one iteration
    loops = loop_cost(compiled.as_text())
    assert loops.loops == [3, 4] and not loops.error and loops.flops_factor == pytest.approx(12)
    r = analyze(Program("train", compiled, [device], 12 * one, 1, 0.0, 0.0))
    assert r.flops == pytest.approx(12 * xla["flops"])
    assert r.bytes_accessed > 3 * xla["bytes accessed"]
    assert any("trips [3, 4]" in n for n in r.notes)


@pytest.mark.slow
def test_scan_layers_step_costs_what_the_unrolled_one_does(tmp_path):
    """model.scan_layers compiles one layer under lax.scan; the report still counts every layer."""
    reports = {}
    for scan in ("false", "true"):
        out = tmp_path / f"{scan}.json"
        assert main(["aot", "train", "--topology", "v5e:2x2", "--json", str(out), TINY, "parallel.preset=zero3",
                     "parallel.fsdp=4", "parallel.data=1", "model.num_layers=3", "data.seq_len=64",
                     f"model.scan_layers={scan}"]) == 0
        reports[scan] = json.loads(out.read_text())
    unrolled, scanned = reports["false"], reports["true"]
    assert any("trips [3" in n for n in scanned["notes"])
    assert scanned["flops"] == pytest.approx(unrolled["flops"], rel=0.05)
    assert scanned["model_flops"] == unrolled["model_flops"]


def test_batch_that_cannot_divide_names_the_keys(capsys):
    rc = main(["aot", "train", "--topology", "v5e:2x2", TINY, "batch_size=6", "parallel.preset=zero3",
               "parallel.fsdp=4", "parallel.data=1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "batch_size=6" in err and "grad_accum=1" in err and "4 devices" in err


def test_mesh_that_cannot_split_names_parallel(capsys):
    rc = main(["aot", "train", "--topology", "v5e:2x2", TINY, "parallel.preset=zero3", "parallel.fsdp=3",
               "parallel.data=1"])
    assert rc == 2
    assert "parallel." in capsys.readouterr().err


def test_unknown_topology_is_one_clear_line(capsys):
    assert main(["aot", "train", "--topology", "v5e:3x3x3x3", TINY]) == 2
    err = capsys.readouterr().err
    assert "--topology 'v5e:3x3x3x3'" in err and "Traceback" not in err


@pytest.mark.slow
def test_zero3_train_step_compiles_to_what_it_promises(tmp_path, capsys):
    """The real Trainer.jit_step for 4 v5e chips: params gathered, gradients reduce-scattered."""
    out = tmp_path / "report.json"
    rc = main(["aot", "train", "--topology", "v5e:2x2", "--json", str(out), TINY, "parallel.preset=zero3",
               "parallel.fsdp=4", "parallel.data=1", "model.num_layers=1", "grad_accum=2"])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["chip"] == "TPU v5e" and r["devices"] == 4 and r["fits"]
    assert r["collectives"].get("all-gather", 0) > 0 and r["collectives"].get("reduce-scatter", 0) > 0
    assert 0 < r["argument_bytes"] < r["total_bytes"] < r["hbm_bytes"]
    # XLA counts the grad-accumulation loop body once; the report counts it grad_accum times.
    assert r["flops"] >= r["model_flops"] / r["devices"] * 0.9
    assert any("trips [2" in n for n in r["notes"])
    assert 0 < r["mfu"] < 1 and r["step_s"] == max(r["compute_s"], r["memory_s"])
    assert "MFU at the roofline bound" in capsys.readouterr().out


@pytest.mark.slow
def test_serve_decode_compiles_with_the_tpu_kernels(tmp_path):
    """The runner's real decode step, tensor-parallel over 2 chips, int8 KV pages: the Pallas
    (Mosaic) paged-attention kernel runs per device inside shard_map."""
    out = tmp_path / "report.json"
    rc = main(["aot", "serve", "--topology", "v5e:2x2", "--context", "256", "--batch", "4", "--json", str(out),
               "configs/serve/default.yaml", "model=tiny", "engine.tp=2", "engine.kv_dtype=int8",
               "engine.dtype=bfloat16", "engine.num_blocks=512"])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["devices"] == 2 and r["fits"] and r["kind"] == "serve-decode"
    assert r["collectives"].get("all-reduce", 0) > 0  # tensor parallelism's partial sums
    assert r["memory_s"] > r["compute_s"]  # decode is memory-bound


@pytest.mark.slow
def test_int4_serve_compiles_tensor_parallel(tmp_path):
    """int4 weights under tp=2: each device runs the Mosaic int4 kernel on its N-slice inside
    shard_map (XLA refuses to partition a Mosaic call: "Please wrap the call in a shard_map")."""
    model = tmp_path / "model.yaml"
    model.write_text("family: llama\nvocab_size: 512\nhidden_size: 512\nintermediate_size: 1024\nnum_layers: 1\n"
                     "num_heads: 4\nnum_kv_heads: 2\nmax_position_embeddings: 512\n")
    out, hlo = tmp_path / "report.json", tmp_path / "step.hlo"
    rc = main(["aot", "serve", "--topology", "v5e:2x2", "--context", "256", "--batch", "4", "--json", str(out),
               "--hlo", str(hlo), "configs/serve/default.yaml", f"model={model}", "engine.tp=2", "engine.quant=int4",
               "engine.dtype=bfloat16", "engine.num_blocks=64"])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["devices"] == 2 and r["fits"] and r["collectives"].get("all-gather", 0) > 0
    # the 7 projections each run the Mosaic int4 kernel on the device's half of N (gate / up: 1024 -> 512)
    calls = re.findall(r"%int4_matmul[\w.]* = bf16\[\d+,(\d+)\]", hlo.read_text())
    assert len(calls) == 7 and max(map(int, calls)) == 512
    # and each device holds only that half: the step's packed weights arrive split (gate / up
    # u8[256, 1024] -> [256, 512], down [512, 512] -> [512, 256]), not replicated
    params = set(re.findall(r"u8\[\d+,\d+\]", hlo.read_text().split("ENTRY")[1].split("\n")[0]))
    assert "u8[256,1024]" not in params and {"u8[256,512]", "u8[512,256]"} <= params


def test_does_not_fit_is_an_error_naming_keys(capsys):
    rc = main(["aot", "serve", "--topology", "v5e:2x2", "--devices", "1", "--context", "64", "--batch", "1",
               "configs/serve/default.yaml", "model=tiny", "engine.kv_cache_memory_gb=40"])
    err = capsys.readouterr().err
    assert rc == 2
    # Either the TPU compiler refuses the buffers itself or the report's total exceeds HBM.
    assert ("serve does not fit: RESOURCE_EXHAUSTED" in err or "per device but a TPU v5e has" in err)
    assert "engine.kv_cache_memory_gb" in err and "Traceback" not in err
