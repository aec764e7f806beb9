"""Next-token log-probabilities: the one definition used by training, evaluation,
quantization perplexity and the serving engine."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def token_logprobs(logits: Array, targets: Array) -> tuple[Array, Array]:
    """Log-probability of each target under its logits.

    Args:
      logits: [..., v] unnormalised scores (any float dtype; computed in float32).
      targets: [...] int token ids, one per distribution.
    Returns:
      (logprob [...] float32 = logits[target] - logsumexp(logits),
       logz [...] float32 = logsumexp(logits), e.g. for a z-loss).
    """
    logits = logits.astype(jnp.float32)
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - logz, logz
