"""What the processes over discrete tokens share: the mask token, the token NLL, and drawing
tokens with a temperature from per-example keys (`ardiff.processes.randomness`).

Tokens are int32 in 0..V-1; a hidden position holds the mask token V (one extra embedding row
of the bidirectional transformer).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mask_token(vocab_size: int) -> int:
  """The id of a hidden position: one past the last value."""
  return vocab_size


def token_nll(logits: jax.Array, x: jax.Array) -> jax.Array:
  """-log softmax(logits)[x] per position: logits [..., V], x int [...] -> float [...] nats."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(logp, x[..., None].astype(jnp.int32), axis=-1)[..., 0]


def draw(keys: jax.Array, logits: jax.Array, temperature) -> jax.Array:
  """Tokens int32 [B, ...] from softmax(logits / temperature), example b with keys[b]."""
  scaled = logits.astype(jnp.float32) / temperature
  return jax.vmap(lambda k, z: jax.random.categorical(k, z, axis=-1))(keys, scaled).astype(
      jnp.int32)
