"""`scan_layers`: one scanned layer body gives the unrolled model's loss and gradients,
with the same flat parameter names (the checkpoint layout does not change)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from puyu_jax.config import load_config
from puyu_jax.models import init_model, param_shapes, to_flat
from puyu_jax.train.config import TrainConfig
from puyu_jax.train.step import REMAT_POLICIES, bind, token_loss


def _loss_and_grads(cfg, params, batch, remat="none"):
    from flax import nnx

    from puyu_jax.models import abstract_model

    graphdef, template = nnx.split(abstract_model(cfg), nnx.Param)

    def loss(p):
        s, _, n = token_loss(bind(graphdef, template, p), batch, 0.0, REMAT_POLICIES[remat])
        return s / n

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("remat", ["none", "full"])
def test_scanned_and_unrolled_agree(remat):
    tc = load_config(TrainConfig, {"model": "tiny"}, ["model.num_layers=3"])
    cfg = tc.model
    scanned = cfg.replace(scan_layers=True)
    assert param_shapes(scanned).keys() == param_shapes(cfg).keys()  # same names and shapes
    params = to_flat(init_model(cfg, seed=1))
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (2, 24)), jnp.int32)
    seg = jnp.asarray(np.repeat([[1] * 16 + [2] * 8], 2, 0), jnp.int32)
    pos = jnp.asarray(np.repeat([list(range(16)) + list(range(8))], 2, 0), jnp.int32)
    batch = {"tokens": tokens, "segment_ids": seg, "positions": pos}

    loss_u, g_u = _loss_and_grads(cfg, params, batch, remat)
    loss_s, g_s = _loss_and_grads(scanned, params, batch, remat)
    np.testing.assert_allclose(loss_s, loss_u, rtol=1e-6)
    for k in g_u:
        np.testing.assert_allclose(g_s[k], g_u[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_scan_compiles_one_layer_body():
    """The scanned program's size does not grow with depth (the point of the option)."""
    tc = load_config(TrainConfig, {"model": "tiny"})

    def hlo_ops(n_layers, scan):
        cfg = tc.model.replace(num_layers=n_layers, scan_layers=scan)
        params = jax.eval_shape(lambda: to_flat(init_model(cfg)))
        batch = {k: jax.ShapeDtypeStruct((2, 16), jnp.int32) for k in ("tokens", "segment_ids", "positions")}
        from flax import nnx

        from puyu_jax.models import abstract_model

        graphdef, template = nnx.split(abstract_model(cfg), nnx.Param)
        fn = jax.jit(jax.grad(lambda p, b: token_loss(bind(graphdef, template, p), b, 0.0, None)[0]))
        return fn.lower(params, batch).as_text().count("\n")

    assert hlo_ops(8, True) < 1.3 * hlo_ops(2, True)
    assert hlo_ops(8, False) > 2 * hlo_ops(2, False)
