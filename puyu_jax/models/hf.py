"""Hugging Face checkpoints <-> the flat parameter dict.

The flat dict (`dict[str, np.ndarray]`) is the contract with the model code:

    embed/embedding                 [V, D]
    layers/{i}/attn_norm/scale      [D]
    layers/{i}/attn/q_proj/kernel   [D, H, Dh]   (+ bias [H, Dh] when qkv_bias)
    layers/{i}/attn/k_proj/kernel   [D, K, Dh]   (+ bias [K, Dh])
    layers/{i}/attn/v_proj/kernel   [D, K, Dh]   (+ bias [K, Dh])
    layers/{i}/attn/o_proj/kernel   [H, Dh, D]   (+ bias [D] when o_bias)
    layers/{i}/mlp_norm/scale       [D]
    layers/{i}/mlp/gate_proj/kernel [D, F]
    layers/{i}/mlp/up_proj/kernel   [D, F]
    layers/{i}/mlp/down_proj/kernel [F, D]
    final_norm/scale                [D]
    lm_head/kernel                  [D, V]       (absent when tie_word_embeddings)

Q/K weights stay in HF's rotate_half order. Family differences are data: the
name maps below and the config translation; InternLM2 additionally fuses
q/k/v into one grouped `wqkv` matrix (`split_wqkv` / `merge_wqkv`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file
from tqdm.auto import tqdm

from puyu_jax.models.config import DTYPES, ModelConfig, RopeConfig

PathLike = str | os.PathLike

# ---------------------------------------------------------------------------
# Weight-name maps (data). Keys are flat-dict keys ("{i}" = layer index);
# values are HF tensor names. "attn/qkv/*" are InternLM2's fused tensors.
# ---------------------------------------------------------------------------

HF_NAMES: dict[str, dict[str, str]] = {
    "standard": {  # llama, qwen2, mistral, internlm (v1)
        "embed/embedding": "model.embed_tokens.weight",
        "final_norm/scale": "model.norm.weight",
        "lm_head/kernel": "lm_head.weight",
        "layers/{i}/attn_norm/scale": "model.layers.{i}.input_layernorm.weight",
        "layers/{i}/mlp_norm/scale": "model.layers.{i}.post_attention_layernorm.weight",
        "layers/{i}/attn/q_proj/kernel": "model.layers.{i}.self_attn.q_proj.weight",
        "layers/{i}/attn/k_proj/kernel": "model.layers.{i}.self_attn.k_proj.weight",
        "layers/{i}/attn/v_proj/kernel": "model.layers.{i}.self_attn.v_proj.weight",
        "layers/{i}/attn/o_proj/kernel": "model.layers.{i}.self_attn.o_proj.weight",
        "layers/{i}/attn/q_proj/bias": "model.layers.{i}.self_attn.q_proj.bias",
        "layers/{i}/attn/k_proj/bias": "model.layers.{i}.self_attn.k_proj.bias",
        "layers/{i}/attn/v_proj/bias": "model.layers.{i}.self_attn.v_proj.bias",
        "layers/{i}/attn/o_proj/bias": "model.layers.{i}.self_attn.o_proj.bias",
        "layers/{i}/mlp/gate_proj/kernel": "model.layers.{i}.mlp.gate_proj.weight",
        "layers/{i}/mlp/up_proj/kernel": "model.layers.{i}.mlp.up_proj.weight",
        "layers/{i}/mlp/down_proj/kernel": "model.layers.{i}.mlp.down_proj.weight",
    },
    "internlm2": {
        "embed/embedding": "model.tok_embeddings.weight",
        "final_norm/scale": "model.norm.weight",
        "lm_head/kernel": "output.weight",
        "layers/{i}/attn_norm/scale": "model.layers.{i}.attention_norm.weight",
        "layers/{i}/mlp_norm/scale": "model.layers.{i}.ffn_norm.weight",
        "layers/{i}/attn/qkv/kernel": "model.layers.{i}.attention.wqkv.weight",
        "layers/{i}/attn/qkv/bias": "model.layers.{i}.attention.wqkv.bias",
        "layers/{i}/attn/o_proj/kernel": "model.layers.{i}.attention.wo.weight",
        "layers/{i}/attn/o_proj/bias": "model.layers.{i}.attention.wo.bias",
        "layers/{i}/mlp/gate_proj/kernel": "model.layers.{i}.feed_forward.w1.weight",
        "layers/{i}/mlp/up_proj/kernel": "model.layers.{i}.feed_forward.w3.weight",
        "layers/{i}/mlp/down_proj/kernel": "model.layers.{i}.feed_forward.w2.weight",
    },
}

# HF tensors that carry no parameters (buffers some old checkpoints saved).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)

_INTERNLM_AUTO_MAP = {
    "internlm": {
        "AutoConfig": "configuration_internlm.InternLMConfig",
        "AutoModel": "modeling_internlm.InternLMForCausalLM",
        "AutoModelForCausalLM": "modeling_internlm.InternLMForCausalLM",
    },
    "internlm2": {
        "AutoConfig": "configuration_internlm2.InternLM2Config",
        "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
        "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
    },
}
_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "mistral": "MistralForCausalLM",
    "internlm": "InternLMForCausalLM",
    "internlm2": "InternLM2ForCausalLM",
}


def np_dtype(dtype: Any) -> np.dtype:
    """numpy dtype for a name or dtype, with bfloat16 from ml_dtypes."""
    if isinstance(dtype, str) and dtype in ("bfloat16", "bf16"):
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def _is_float(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.floating) or dtype == ml_dtypes.bfloat16


def _cast(x: np.ndarray, dtype: Any) -> np.ndarray:
    """x cast to dtype when both are given and x is floating."""
    if dtype is None or not _is_float(x.dtype):
        return x
    return x.astype(np_dtype(dtype), copy=False)


def _dtype_name(dtype: np.dtype) -> str | None:
    name = np.dtype(dtype).name
    return name if name in DTYPES else None


# ---------------------------------------------------------------------------
# Config translation
# ---------------------------------------------------------------------------


def _first_int(x: Any, default: int) -> int:
    if isinstance(x, (list, tuple)):
        x = x[0] if x else None
    return default if x is None else int(x)


def _rope_from_hf(hf: Mapping[str, Any], family: str) -> RopeConfig:
    if family == "internlm":
        rot = hf.get("rotary") or {}
        theta = float(rot.get("base", hf.get("rope_theta", 10000.0)))
        kind = rot.get("type", "origin")
        if kind == "origin":
            return RopeConfig(theta=theta)
        if kind == "dynamic":
            return RopeConfig(theta=theta, scaling="dynamic", factor=float(rot.get("scaling_factor", 1.0)))
        raise ValueError(f"internlm rotary type {kind!r} is not supported")
    params = dict(hf.get("rope_parameters") or {})
    if params and all(isinstance(v, dict) for v in params.values()):
        raise ValueError(f"per-layer-type rope_parameters are not supported: {sorted(params)}")
    scaling = hf.get("rope_scaling") or {}
    theta = float(params.get("rope_theta", hf.get("rope_theta", scaling.get("rope_theta", 10000.0))))
    if not scaling:
        scaling = params
    kind = scaling.get("rope_type", scaling.get("type")) or "default"
    factor = float(scaling.get("factor") or 1.0)
    omax = int(scaling.get("original_max_position_embeddings") or 0)
    if kind == "default":
        return RopeConfig(theta=theta)
    if kind in ("linear", "dynamic"):
        return RopeConfig(theta=theta, scaling=kind, factor=factor, original_max_position_embeddings=omax)
    if kind == "llama3":
        return RopeConfig(
            theta=theta,
            scaling="llama3",
            factor=factor,
            low_freq_factor=float(scaling.get("low_freq_factor", 1.0)),
            high_freq_factor=float(scaling.get("high_freq_factor", 4.0)),
            original_max_position_embeddings=omax,
        )
    raise ValueError(f"rope type {kind!r} is not supported (expected default, linear, dynamic, llama3)")


def _sliding_window_from_hf(hf: Mapping[str, Any], family: str) -> int:
    if family == "mistral":
        return int(hf.get("sliding_window") or 0)
    if family != "qwen2":
        return 0
    window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
    types = hf.get("layer_types")
    if types is None and window is not None:
        n = hf["num_hidden_layers"]
        types = ["sliding_attention" if i >= hf.get("max_window_layers", 28) else "full_attention" for i in range(n)]
    if not types or all(t == "full_attention" for t in types):
        return 0
    if all(t == "sliding_attention" for t in types) and hf.get("sliding_window"):
        return int(hf["sliding_window"])
    raise ValueError("qwen2 with sliding window on only some layers is not supported")


def config_from_hf(hf: Mapping[str, Any]) -> ModelConfig:
    """ModelConfig from an HF `config.json` dict (llama, qwen2, mistral, internlm, internlm2)."""
    family = hf.get("model_type")
    if family not in _ARCHITECTURES:
        raise ValueError(f"model_type={family!r} is not supported (expected one of {sorted(_ARCHITECTURES)})")
    if hf.get("mlp_bias"):
        raise ValueError("mlp_bias=true is not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act={hf.get('hidden_act')!r} is not supported (only silu)")
    d, h = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    k = int(hf.get("num_key_value_heads") or h)
    head_dim = int(hf.get("head_dim") or 0)
    if head_dim == d // h:
        head_dim = 0
    if family == "qwen2":
        qkv_bias, o_bias = True, False
    elif family in ("internlm", "internlm2"):
        qkv_bias = o_bias = bool(hf.get("bias", True))  # both remote-code configs default to True
    elif family == "llama":
        qkv_bias = o_bias = bool(hf.get("attention_bias", False))
    else:
        qkv_bias = o_bias = False
    dtype = hf.get("dtype") or hf.get("torch_dtype") or "float32"
    dtype = dtype if dtype in DTYPES else "float32"
    return ModelConfig(
        family=family,
        vocab_size=int(hf["vocab_size"]),
        hidden_size=d,
        intermediate_size=int(hf["intermediate_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=h,
        num_kv_heads=k,
        head_dim=head_dim,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        rope=_rope_from_hf(hf, family),
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        sliding_window=_sliding_window_from_hf(hf, family),
        dtype=dtype,
        param_dtype=dtype,
        bos_token_id=_first_int(hf.get("bos_token_id"), 1),
        eos_token_id=_first_int(hf.get("eos_token_id"), 2),
    )


def _rope_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    r = cfg.rope
    if r.scaling == "none":
        return {"rope_type": "default", "rope_theta": r.theta}
    out: dict[str, Any] = {"rope_type": r.scaling, "factor": r.factor, "rope_theta": r.theta}
    if r.scaling == "llama3":
        out |= {
            "low_freq_factor": r.low_freq_factor,
            "high_freq_factor": r.high_freq_factor,
            "original_max_position_embeddings": r.original_max_position_embeddings or cfg.max_position_embeddings,
        }
    elif r.original_max_position_embeddings not in (0, cfg.max_position_embeddings):
        out["original_max_position_embeddings"] = r.original_max_position_embeddings
    return out


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """HF `config.json` dict for cfg (transformers-5 format for llama/qwen2/mistral,
    the original remote-code format for internlm/internlm2)."""
    f = cfg.family
    if f == "qwen2" and (not cfg.qkv_bias or cfg.o_bias):
        raise ValueError("qwen2 requires qkv_bias=True and o_bias=False")
    if f == "mistral" and (cfg.qkv_bias or cfg.o_bias):
        raise ValueError("mistral has no attention biases")
    if f in ("llama", "internlm", "internlm2") and cfg.qkv_bias != cfg.o_bias:
        raise ValueError(f"{f} has one bias flag for q, k, v and o: qkv_bias must equal o_bias")
    if f == "internlm" and cfg.num_kv_heads != cfg.num_heads:
        raise ValueError("internlm (v1) has no grouped-query attention")
    if cfg.sliding_window and f not in ("mistral", "qwen2"):
        raise ValueError(f"{f} has no sliding-window attention")
    hf: dict[str, Any] = {
        "architectures": [_ARCHITECTURES[f]],
        "model_type": f,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "initializer_range": 0.02,
        "use_cache": True,
    }
    if f in ("internlm", "internlm2"):
        r = cfg.rope
        if cfg.head_dim not in (0, cfg.hidden_size // cfg.num_heads):
            raise ValueError(f"{f} requires head_dim == hidden_size // num_heads")
        hf["auto_map"] = _INTERNLM_AUTO_MAP[f]
        hf["bias"] = cfg.qkv_bias
        hf["torch_dtype"] = cfg.param_dtype
        if f == "internlm":
            del hf["num_key_value_heads"]
            if r.scaling not in ("none", "dynamic"):
                raise ValueError(f"internlm supports rope scaling none/dynamic, not {r.scaling!r}")
            rot: dict[str, Any] = {"base": r.theta, "type": "origin" if r.scaling == "none" else "dynamic"}
            if r.scaling == "dynamic":
                rot["scaling_factor"] = r.factor
            hf["rotary"] = rot
        else:
            if r.scaling not in ("none", "dynamic", "linear"):
                raise ValueError(f"internlm2 supports rope scaling none/dynamic/linear, not {r.scaling!r}")
            hf["rope_theta"] = r.theta
            hf["rope_scaling"] = None if r.scaling == "none" else {"type": r.scaling, "factor": r.factor}
            hf["attn_implementation"] = "eager"
        return hf
    if f != "qwen2" or cfg.head_dim:  # Qwen2Config has no head_dim field unless needed
        hf["head_dim"] = cfg.dim_per_head
    hf["rope_parameters"] = _rope_to_hf(cfg)
    hf["dtype"] = cfg.param_dtype
    if f == "llama":
        hf["attention_bias"] = cfg.qkv_bias
        hf["mlp_bias"] = False
    elif f == "mistral":
        hf["sliding_window"] = cfg.sliding_window or None
    elif f == "qwen2":
        hf["use_sliding_window"] = bool(cfg.sliding_window)
        hf["sliding_window"] = cfg.sliding_window or None
        hf["max_window_layers"] = 0 if cfg.sliding_window else cfg.num_layers
    return hf


# ---------------------------------------------------------------------------
# Tensor layouts
# ---------------------------------------------------------------------------


def flat_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every flat-dict key of cfg with its shape, as the model declares them."""
    from puyu_jax.models.params import param_shapes

    return {k: tuple(v.shape) for k, v in param_shapes(cfg).items()}


def _to_flat_layout(key: str, w: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """HF-shaped tensor -> flat-dict layout (`shape`)."""
    if key.endswith("attn/o_proj/kernel"):  # [D, H*Dh] -> [H, Dh, D]
        w = w.T
    elif key.endswith("/kernel"):  # Linear [out, in] -> [in, out...]
        w = w.reshape(w.shape[0], -1).T
    return np.ascontiguousarray(w.reshape(shape))


def _to_hf_layout(key: str, w: np.ndarray) -> np.ndarray:
    """Flat-dict tensor -> HF shape."""
    if key.endswith("attn/o_proj/kernel"):  # [H, Dh, D] -> [D, H*Dh]
        w = w.reshape(-1, w.shape[-1]).T
    elif key.endswith("/kernel"):  # [in, out...] -> [out, in]
        w = w.reshape(w.shape[0], -1).T
    elif key.endswith("/bias"):
        w = w.reshape(-1)
    return np.ascontiguousarray(w)


def split_wqkv(w: np.ndarray, cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """InternLM2 fused `wqkv` ([(H+2K)*Dh, D] weight or [(H+2K)*Dh] bias, grouped
    per kv head as [K, H//K + 2, Dh]) -> HF-shaped q [H*Dh, ...], k, v [K*Dh, ...]."""
    h, k, dh = cfg.num_heads, cfg.num_kv_heads, cfg.dim_per_head
    g = h // k
    if w.shape[0] != (h + 2 * k) * dh:
        raise ValueError(f"wqkv has {w.shape[0]} rows, expected (H + 2K) * Dh = {(h + 2 * k) * dh}")
    rest = w.shape[1:]
    w = w.reshape(k, g + 2, dh, *rest)
    q = w[:, :g].reshape(h * dh, *rest)
    return np.ascontiguousarray(q), w[:, g].reshape(k * dh, *rest), w[:, g + 1].reshape(k * dh, *rest)


def merge_wqkv(q: np.ndarray, k: np.ndarray, v: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """Inverse of `split_wqkv`."""
    h, kv, dh = cfg.num_heads, cfg.num_kv_heads, cfg.dim_per_head
    g = h // kv
    rest = q.shape[1:]
    parts = [q.reshape(kv, g, dh, *rest), k.reshape(kv, 1, dh, *rest), v.reshape(kv, 1, dh, *rest)]
    return np.concatenate(parts, axis=1).reshape((h + 2 * kv) * dh, *rest)


def _name_map(cfg: ModelConfig) -> dict[str, str]:
    """Flat (or InternLM2 fused pseudo-) key -> HF name for every tensor cfg has."""
    fused = cfg.family == "internlm2"
    names = HF_NAMES["internlm2" if fused else "standard"]
    out: dict[str, str] = {}
    for key in flat_shapes(cfg):
        if fused and "/attn/" in key and key.split("/")[-2] in ("q_proj", "k_proj", "v_proj"):
            if key.split("/")[-2] != "q_proj":
                continue
            key = key.replace("/q_proj/", "/qkv/")
        i = key.split("/")[1] if key.startswith("layers/") else None
        template = key if i is None else key.replace(f"layers/{i}/", "layers/{i}/", 1)
        out[key] = names[template].format(i=i)
    return out


def _check_names(have: set[str], want: set[str], what: str) -> None:
    unknown, missing = sorted(have - want), sorted(want - have)
    if unknown or missing:
        msg = [f"{what} do not match the config:"]
        if missing:
            msg.append(f"  missing ({len(missing)}): {', '.join(missing)}")
        if unknown:
            msg.append(f"  unknown ({len(unknown)}): {', '.join(unknown)}")
        raise KeyError("\n".join(msg))


def _progress(items: list, desc: str) -> Any:
    return tqdm(items, desc=desc, disable=len(items) <= 100, leave=False)


def hf_to_flat(cfg: ModelConfig, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """HF state dict (numpy) -> flat dict. Exact inverse of `flat_to_hf`.

    `tensors` may be lazy (values fetched once, on access). A tied checkpoint may
    still carry `lm_head.weight`; it is ignored.
    """
    names = _name_map(cfg)
    shapes = flat_shapes(cfg)
    have = {n for n in tensors if not n.endswith(IGNORED_SUFFIXES)}
    if cfg.tie_word_embeddings:
        have.discard(HF_NAMES["internlm2" if cfg.family == "internlm2" else "standard"]["lm_head/kernel"])
    _check_names(have, set(names.values()), f"{cfg.family} checkpoint tensors")
    flat: dict[str, np.ndarray] = {}
    for key, name in _progress(list(names.items()), "hf -> flat"):
        w = np.asarray(tensors[name])
        if "/qkv/" in key:
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), split_wqkv(w, cfg)):
                k2 = key.replace("/qkv/", f"/{proj}/")
                flat[k2] = _to_flat_layout(k2, part, shapes[k2])
        else:
            if w.size != int(np.prod(shapes[key])):
                raise ValueError(f"{name}: shape {w.shape} does not fit {key} {shapes[key]}")
            flat[key] = _to_flat_layout(key, w, shapes[key])
    return flat


def flat_to_hf(cfg: ModelConfig, flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Flat dict -> HF state dict (numpy), names per `cfg.family`."""
    shapes = flat_shapes(cfg)
    _check_names(set(flat), set(shapes), "flat parameters")
    for key, shape in shapes.items():
        if tuple(np.shape(flat[key])) != shape:
            raise ValueError(f"{key}: shape {np.shape(flat[key])}, expected {shape}")
    out: dict[str, np.ndarray] = {}
    for key, name in _progress(list(_name_map(cfg).items()), "flat -> hf"):
        if "/qkv/" in key:
            q, k, v = (
                _to_hf_layout(k2, np.asarray(flat[k2]))
                for k2 in (key.replace("/qkv/", f"/{p}/") for p in ("q_proj", "k_proj", "v_proj"))
            )
            out[name] = merge_wqkv(q, k, v, cfg)
        else:
            out[name] = _to_hf_layout(key, np.asarray(flat[key]))
    return out


# ---------------------------------------------------------------------------
# Directories
# ---------------------------------------------------------------------------


class _LazySafetensors(Mapping[str, np.ndarray]):
    """Read-only mapping over one or more safetensors files; loads on access."""

    def __init__(self, files: list[Path], dtype: Any = None):
        self._where: dict[str, Path] = {}
        for f in files:
            with safe_open(f, framework="numpy") as h:
                for k in h.keys():
                    self._where[k] = f
        self._handles: dict[Path, Any] = {}
        self._dtype = dtype

    def __getitem__(self, name: str) -> np.ndarray:
        f = self._where[name]
        if f not in self._handles:
            self._handles[f] = safe_open(f, framework="numpy")
        return _cast(self._handles[f].get_tensor(name), self._dtype)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def safetensors_files(path: PathLike) -> list[Path]:
    """The safetensors files of an HF checkpoint directory (index-aware)."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [path / f for f in sorted(set(weight_map.values()))]
    if (path / "model.safetensors").exists():
        return [path / "model.safetensors"]
    files = sorted(path.glob("model-*-of-*.safetensors"))
    if not files:
        hint = " (only safetensors are read; found pytorch_model*.bin)" if any(path.glob("pytorch_model*.bin")) else ""
        raise FileNotFoundError(f"{path}: no model.safetensors, sharded safetensors or index found{hint}")
    return files


def chat_template_name(template: str | None) -> str:
    """Our chat-template name for a Jinja chat template ("chatml" or "plain")."""
    return "chatml" if template and "<|im_start|>" in template else "plain"


def _hf_chat_template(path: Path) -> str | None:
    if (path / "chat_template.jinja").exists():
        return (path / "chat_template.jinja").read_text()
    if (path / "tokenizer_config.json").exists():
        t = json.loads((path / "tokenizer_config.json").read_text()).get("chat_template")
        if isinstance(t, list):  # named templates
            t = next((x.get("template") for x in t if x.get("name") == "default"), None)
        return t if isinstance(t, str) else None
    return None


def load_hf_dir(path: PathLike, dtype: Any = None) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """Read an HF checkpoint directory (config.json + safetensors) into (cfg, flat).

    `dtype` (e.g. "float32", "bfloat16") casts floating tensors; None keeps the stored dtype.
    The chat template is "chatml" when the tokenizer's template uses `<|im_start|>`.
    """
    path = Path(path)
    cfg = config_from_hf(json.loads((path / "config.json").read_text()))
    tensors = _LazySafetensors(safetensors_files(path), dtype)
    flat = hf_to_flat(cfg, tensors)
    stored = _dtype_name(flat["embed/embedding"].dtype) or cfg.param_dtype
    cfg = cfg.replace(param_dtype=stored, chat_template=chat_template_name(_hf_chat_template(path)))
    return cfg, flat


def save_hf_dir(
    cfg: ModelConfig,
    flat: Mapping[str, np.ndarray],
    path: PathLike,
    *,
    tokenizer_dir: PathLike | None = None,
    max_shard_bytes: int = 2**30,
    dtype: Any = None,
) -> Path:
    """Write an HF checkpoint directory: config.json, generation_config.json,
    safetensors (sharded with an index above `max_shard_bytes`), tokenizer files
    copied from `tokenizer_dir` when given. Returns the directory."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: _cast(v, dtype) for k, v in flat_to_hf(cfg, flat).items()}
    stored = _dtype_name(next(iter(tensors.values())).dtype) or cfg.param_dtype
    hf = config_to_hf(cfg.replace(param_dtype=stored))
    (path / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    gen = {"_from_model_config": True, "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id}
    (path / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")

    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, w in tensors.items():
        if shards[-1] and size + w.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = w
        size += w.nbytes
    for old in list(path.glob("model*.safetensors")) + [path / "model.safetensors.index.json"]:
        old.unlink(missing_ok=True)
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], path / "model.safetensors", metadata=meta)
    else:
        n = len(shards)
        weight_map: dict[str, str] = {}
        for j, shard in enumerate(shards, 1):
            fname = f"model-{j:05d}-of-{n:05d}.safetensors"
            save_file(shard, path / fname, metadata=meta)
            weight_map |= dict.fromkeys(shard, fname)
        index = {"metadata": {"total_size": sum(w.nbytes for w in tensors.values())}, "weight_map": weight_map}
        (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    if tokenizer_dir is not None:
        copy_tokenizer_files(tokenizer_dir, path)
    return path


def copy_tokenizer_files(src: PathLike, dst: PathLike) -> list[str]:
    """Copy the known tokenizer files present in `src` to `dst`; returns their names."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    return copied
