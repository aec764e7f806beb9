"""The one decoder-only transformer (Flax NNX) shared by train, finetune, serve and eval.

Shape letters used throughout (einsum style):
  b batch, t query length, s key length, d embed (hidden), h query heads,
  k kv heads, g query heads per kv head (h = k * g), e head_dim, f mlp, v vocab.

Every parameter is declared once, by `declare_param`, with its shape, dtype, initializer
and *logical* axis names (`vocab`, `embed`, `heads`, `kv_heads`, `head_dim`,
`mlp`, `norm`). A sharding rule table (see `puyu_jax.parallel`) maps those names
onto mesh axes; the model itself never names a mesh axis.

Parameter paths (the flat-dict contract used by the checkpoint converters):

    embed/embedding                 [v, d]
    layers/{i}/attn_norm/scale      [d]
    layers/{i}/attn/{q,k,v}_proj/kernel  [d, h|k, e]   (+ bias [h|k, e] when qkv_bias)
    layers/{i}/attn/o_proj/kernel   [h, e, d]          (+ bias [d] when o_bias)
    layers/{i}/mlp_norm/scale       [d]
    layers/{i}/mlp/{gate,up}_proj/kernel [d, f];  layers/{i}/mlp/down_proj/kernel [f, d]
    final_norm/scale                [d]
    lm_head/kernel                  [d, v]             (absent when embeddings are tied)
"""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from puyu_jax.models.config import ModelConfig, RopeConfig
from puyu_jax.models.projection import Projection, declare_param
from puyu_jax.parallel.sharding import constrain

Array = jax.Array


# ----------------------------------------------------------------------------- RoPE


def rope_inv_freq(rope: RopeConfig, head_dim: int, max_positions: int, seq_len: Array | int) -> Array:
    """Inverse frequencies [e/2] for a RoPE config, as transformers computes them.

    Args:
      rope: theta and scaling.
      head_dim: rotary dimension (the full head dim for every supported family).
      max_positions: the model's max_position_embeddings.
      seq_len: current sequence length (max position + 1); only dynamic NTK uses it.
    """
    exponent = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    original = rope.original_max_position_embeddings or max_positions
    if rope.scaling == "dynamic":
        # Dynamic NTK: grow the base once the sequence outruns the trained context.
        seq = jnp.maximum(jnp.asarray(seq_len, jnp.float32), original)
        base = rope.theta * ((rope.factor * seq / original) - (rope.factor - 1)) ** (
            head_dim / (head_dim - 2)
        )
        return 1.0 / (base**exponent)
    inv_freq = 1.0 / (rope.theta**exponent)
    if rope.scaling == "linear":
        return inv_freq / rope.factor
    if rope.scaling == "llama3":
        low_wavelen = original / rope.low_freq_factor
        high_wavelen = original / rope.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        smooth = (original / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
        smoothed = (1 - smooth) * inv_freq / rope.factor + smooth * inv_freq
        scaled = jnp.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
        is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return jnp.where(is_medium, smoothed, scaled)
    return inv_freq


def apply_rope(x: Array, positions: Array, inv_freq: Array) -> Array:
    """Rotates x [b, t, n, e] by positions [b, t] (rotate-half convention, as in HF)."""
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # b t e/2
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


# ----------------------------------------------------------------------------- KV cache


@flax.struct.dataclass
class KVCache:
    """Dense per-layer KV cache for simple generation (the serving engine pages its own).

    Sequences are left-padded so that every row writes at the same slot:
    `length` slots are filled for all rows, and row b's real tokens start at
    slot `starts[b]`.

    k, v: one [b, s_max, k, e] array per layer.
    starts: [b] int32, first real slot of each row.
    length: [] int32, number of filled slots.
    """

    k: list[Array]
    v: list[Array]
    starts: Array
    length: Array

    @property
    def max_length(self) -> int:
        return self.k[0].shape[1]


def init_cache(cfg: ModelConfig, batch: int, max_length: int, starts: Array | None = None, dtype=None) -> KVCache:
    """An empty cache for `batch` rows of up to `max_length` slots."""
    dtype = jnp.dtype(dtype or cfg.dtype)
    shape = (batch, max_length, cfg.num_kv_heads, cfg.dim_per_head)
    zeros = [jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)]
    starts = jnp.zeros((batch,), jnp.int32) if starts is None else jnp.asarray(starts, jnp.int32)
    return KVCache(k=zeros, v=[jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)], starts=starts, length=jnp.zeros((), jnp.int32))


# ----------------------------------------------------------------------------- layers


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, *, param_dtype, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = declare_param(rngs, (dim,), ("norm",), param_dtype, init="ones")

    def __call__(self, x: Array) -> Array:
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        # Same order as transformers: normalise in fp32, cast back, then scale.
        return self.scale[...].astype(x.dtype) * y.astype(x.dtype)


def attention(q: Array, k: Array, v: Array, mask: Array, scale: float, impl: str = "einsum") -> Array:
    """Grouped-query attention.

    Args:
      q: [b, t, h, e] queries.
      k, v: [b, s, k, e] keys and values (h is a multiple of k).
      mask: [b, t, s] bool, True where query t may attend to key s.
      scale: logit scale, usually 1/sqrt(e).
      impl: "einsum" (plain JAX, fp32 softmax) or "dot_product" (jax.nn.dot_product_attention:
        cuDNN flash attention on GPU).
    Returns:
      [b, t, h, e].
    """
    if impl == "dot_product":
        return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], scale=scale)
    b, t, h, e = q.shape
    kv = k.shape[2]
    qg = q.reshape(b, t, kv, h // kv, e)
    logits = jnp.einsum("btkge,bske->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
    logits = jnp.where(mask[:, None, None, :, :], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bske->btkge", probs, v)
    return out.reshape(b, t, h, e)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, h, kv, e = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.dim_per_head
        pd = jnp.dtype(cfg.param_dtype)
        self.cfg = cfg
        self.q_proj = Projection(rngs, (d, h, e), ("embed", "heads", "head_dim"), pd, bias=cfg.qkv_bias)
        self.k_proj = Projection(rngs, (d, kv, e), ("embed", "kv_heads", "head_dim"), pd, bias=cfg.qkv_bias)
        self.v_proj = Projection(rngs, (d, kv, e), ("embed", "kv_heads", "head_dim"), pd, bias=cfg.qkv_bias)
        self.o_proj = Projection(rngs, (h, e, d), ("heads", "head_dim", "embed"), pd, in_axes=2, bias=cfg.o_bias)

    def __call__(self, x: Array, positions: Array, inv_freq: Array, mask: Array, kv_cache=None):
        """x [b, t, d] -> ([b, t, d], new (k, v) layer cache or None)."""
        dtype = x.dtype
        q = self.q_proj("btd,dhe->bthe", x)
        k = self.k_proj("btd,dke->btke", x)
        v = self.v_proj("btd,dke->btke", x)
        q = apply_rope(q, positions, inv_freq)
        k = apply_rope(k, positions, inv_freq)
        scale = 1.0 / math.sqrt(self.cfg.dim_per_head)
        if isinstance(kv_cache, LayerCache):
            # A cache that owns its attention (the serving engine's paged KV cache).
            out, kv_cache = kv_cache.attend(q, k, v, scale)
            return self.o_proj("bthe,hed->btd", out), kv_cache
        if kv_cache is not None:
            cache_k, cache_v, offset = kv_cache
            cache_k = jax.lax.dynamic_update_slice_in_dim(cache_k, k.astype(cache_k.dtype), offset, axis=1)
            cache_v = jax.lax.dynamic_update_slice_in_dim(cache_v, v.astype(cache_v.dtype), offset, axis=1)
            k, v = cache_k.astype(dtype), cache_v.astype(dtype)
            kv_cache = (cache_k, cache_v)
        out = attention(q, k, v, mask, scale, self.cfg.attention_impl)
        return self.o_proj("bthe,hed->btd", out), kv_cache


class Embed(nnx.Module):
    """Token embedding `embedding [V, D]`; `attend` is the tied lm_head (quantized models swap
    in a module with the same two methods, see `puyu_jax.quant.model`)."""

    def __init__(self, rngs, vocab: int, dim: int, dtype):
        self.embedding = declare_param(rngs, (vocab, dim), ("vocab", "embed"), dtype)

    def __call__(self, tokens: Array) -> Array:
        """tokens [b, t] -> [b, t, D] in the parameter dtype."""
        return jnp.take(self.embedding[...], tokens, axis=0)

    def attend(self, x: Array) -> Array:
        """x [b, t, D] -> logits [b, t, V] in x.dtype."""
        return jnp.einsum("btd,vd->btv", x, self.embedding[...].astype(x.dtype))


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, f, pd = cfg.hidden_size, cfg.intermediate_size, jnp.dtype(cfg.param_dtype)
        self.gate_proj = Projection(rngs, (d, f), ("embed", "mlp"), pd)
        self.up_proj = Projection(rngs, (d, f), ("embed", "mlp"), pd)
        self.down_proj = Projection(rngs, (f, d), ("mlp", "embed"), pd)

    def __call__(self, x: Array) -> Array:
        gate = self.gate_proj("btd,df->btf", x)
        up = self.up_proj("btd,df->btf", x)
        return self.down_proj("btf,fd->btd", jax.nn.silu(gate) * up)


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        pd = jnp.dtype(cfg.param_dtype)
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=pd, rngs=rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=pd, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x, positions, inv_freq, mask, kv_cache=None):
        with jax.named_scope("attention"):
            h, kv_cache = self.attn(self.attn_norm(x), positions, inv_freq, mask, kv_cache)
        x = x + h
        with jax.named_scope("mlp"):
            x = x + self.mlp(self.mlp_norm(x))
        return x, kv_cache


class Transformer(nnx.Module):
    """Decoder-only LM covering InternLM, InternLM2, Llama 2/3, Qwen2 and Mistral."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        pd = jnp.dtype(cfg.param_dtype)
        self.cfg = cfg
        self.embed = Embed(rngs, cfg.vocab_size, cfg.hidden_size, pd)
        self.layers = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=pd, rngs=rngs)
        if not cfg.tie_word_embeddings:
            self.lm_head = Projection(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), pd)

    def __call__(
        self,
        tokens: Array,
        positions: Array | None = None,
        segment_ids: Array | None = None,
        cache: KVCache | ExternalCache | None = None,
        *,
        last_only: bool = False,
        remat: Any = None,
    ) -> tuple[Array, Any]:
        """Forward pass.

        Args:
          tokens: [b, t] int token ids.
          positions: [b, t] positions (training; default 0..t-1). Ignored with a cache,
            where positions follow from the cache's `starts` and `length`.
          segment_ids: [b, t] document ids for packed sequences (0 = padding); tokens
            attend only within their segment. Ignored with a cache.
          cache: a KVCache to extend (prefill or decode); the new tokens are written at
            slots [length, length + t) and the updated cache is returned. Or an
            `ExternalCache` (the engine's paged cache), which owns attention and positions.
          last_only: return logits for the last position only ([b, 1, v]).
          remat: optional `jax.checkpoint` policy (or True for full remat) per block.
        Returns:
          (logits [b, t|1, v] float32, updated cache or None).
        """
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        b, t = tokens.shape
        if isinstance(cache, ExternalCache):
            return self._external_cache_forward(tokens, cache, last_only)
        if cache is None:
            if positions is None:
                positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
            mask = _train_mask(t, segment_ids, cfg.sliding_window, b)
            seq_len = jnp.max(positions) + 1
        else:
            slots = cache.length + jnp.arange(t, dtype=jnp.int32)  # t
            positions = jnp.maximum(slots[None, :] - cache.starts[:, None], 0)
            mask = _cache_mask(slots, cache.starts, cache.max_length, cfg.sliding_window)
            seq_len = cache.length + t - jnp.min(cache.starts)
        inv_freq = rope_inv_freq(cfg.rope, cfg.dim_per_head, cfg.max_position_embeddings, seq_len)

        x = constrain(self.embed(tokens).astype(dtype), ("batch", "length", "embed"))
        new_k, new_v = [], []
        scanned = cfg.scan_layers and cache is None
        if scanned:
            x = _scan_layers(self.layers, x, positions, inv_freq, mask, remat)
        for i, layer in enumerate([] if scanned else self.layers):
            layer_cache = None if cache is None else (cache.k[i], cache.v[i], cache.length)
            if remat is not None and cache is None:
                policy = None if remat is True else remat
                x, _ = nnx.remat(lambda lyr, *a: lyr(*a), policy=policy)(layer, x, positions, inv_freq, mask)
            else:
                x, layer_cache = layer(x, positions, inv_freq, mask, layer_cache)
            x = constrain(x, ("batch", "length", "embed"))
            if cache is not None:
                new_k.append(layer_cache[0])
                new_v.append(layer_cache[1])
        if last_only:
            x = x[:, -1:]
        logits = self._logits(x)
        if cache is not None:
            cache = cache.replace(k=new_k, v=new_v, length=cache.length + t)
        return logits, cache


    def _external_cache_forward(self, tokens: Array, cache: Any, last_only: bool):
        """Forward over a cache that owns attention (see `ExternalCache`)."""
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        positions = cache.positions
        inv_freq = rope_inv_freq(cfg.rope, cfg.dim_per_head, cfg.max_position_embeddings, jnp.max(positions) + 1)
        x = constrain(self.embed(tokens).astype(dtype), ("batch", "length", "embed"))
        for i, layer in enumerate(self.layers):
            x, view = layer(x, positions, inv_freq, None, cache.layer(i))
            cache = view.cache
            x = constrain(x, ("batch", "length", "embed"))
        if last_only:
            index = cache.logits_index if cache.logits_index.ndim == 2 else cache.logits_index[:, None]
            x = jnp.take_along_axis(x, index[:, :, None], axis=1)  # [b, S, d]
        return self._logits(x), cache

    def _logits(self, x: Array) -> Array:
        """The tail every path shares: final norm, then the (tied or separate) head, in float32."""
        x = self.final_norm(x)
        if self.cfg.tie_word_embeddings:
            return self.embed.attend(x).astype(jnp.float32)
        return self.lm_head("btd,dv->btv", x).astype(jnp.float32)


@runtime_checkable
class LayerCache(Protocol):
    """One layer's view of a cache that owns its attention."""

    cache: Any  # the updated whole cache, after `attend`

    def attend(self, q: Array, k: Array, v: Array, scale: float) -> tuple[Array, "LayerCache"]:
        """Stores the new keys / values (`[b, t, k, e]`) and attends `q [b, t, h, e]` over the
        cached ones: (out `[b, t, h, e]`, the view holding the updated cache)."""
        ...


@runtime_checkable
class ExternalCache(Protocol):
    """What the model needs of a cache that owns its attention (the serving engine's
    `serve.kv_cache.PagedBatch`); the dense `KVCache` is the other kind.

    positions: [b, t] int32 absolute position of every new token.
    logits_index: [b] or [b, S] int32, which of the t tokens give each row's logits with last_only.
    """

    positions: Array
    logits_index: Array

    def layer(self, i: int) -> LayerCache:
        """The view of layer `i`."""
        ...


def _scan_layers(layers, x: Array, positions: Array, inv_freq: Array, mask: Array, remat: Any) -> Array:
    """The layers as one `lax.scan` over their stacked parameters (one compiled body).

    The parameters stay one module per layer (the checkpoint layout); they are stacked
    here, inside the traced step, so the program holds one copy of a layer's code
    whatever the depth. Costs a stacked copy of the layer weights (and of their
    gradients) in temporaries.
    """
    graphdef, first = nnx.split(layers[0])
    states = [first] + [nnx.split(layer)[1] for layer in layers[1:]]
    for i, layer in enumerate(layers[1:], 1):
        if nnx.graphdef(layer) != graphdef:
            raise ValueError(f"scan_layers needs identical layers; layer {i} differs from layer 0 "
                             "(e.g. LoRA targets or quantization on some layers only)")
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)

    def body(h, state):
        def run(state, h):
            return nnx.merge(graphdef, state)(h, positions, inv_freq, mask)[0]

        if remat is not None:
            run = jax.checkpoint(run, policy=None if remat is True else remat)
        return constrain(run(state, h), ("batch", "length", "embed")), None

    x, _ = jax.lax.scan(body, x, stacked)
    return x


def _train_mask(t: int, segment_ids: Array | None, window: int, b: int) -> Array:
    """[b, t, t] causal mask, restricted to equal non-zero segments when packed."""
    idx = jnp.arange(t)
    mask = idx[None, :] <= idx[:, None]
    if window:
        mask &= idx[:, None] - idx[None, :] < window
    mask = jnp.broadcast_to(mask, (b, t, t))
    if segment_ids is not None:
        same = segment_ids[:, :, None] == segment_ids[:, None, :]
        mask &= same & (segment_ids[:, None, :] != 0)
    return mask


def _cache_mask(slots: Array, starts: Array, max_length: int, window: int) -> Array:
    """[b, t, s_max] mask: key slot j is visible to query slot i iff starts[b] <= j <= i."""
    j = jnp.arange(max_length)
    mask = (j[None, None, :] <= slots[None, :, None]) & (j[None, None, :] >= starts[:, None, None])
    if window:
        mask &= slots[None, :, None] - j[None, None, :] < window
    return mask
