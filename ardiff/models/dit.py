"""A transformer denoiser for Gaussian diffusion (DiT-style, adaLN-Zero conditioning).

``DiffusionTransformer(...).apply(params, x, t, y, train=False, rngs=...)`` has the UNet's call
signature (``ardiff.models.unet``): x float [B, H, W, C], t float [B] in [0, 1], y int [B] in
0..num_classes (num_classes is the null label of classifier-free guidance); it returns float32
[B, H, W, C]. Its size comes from the same config section as the autoregressive transformers
(``width``, ``depth``, ``heads``, ``dropout``, ``remat``), so raster AR, ARDM and diffusion can be
compared with one backbone and differ only in the removal process.

Tokens: the image is cut into non-overlapping p x p patches (p = ``patch_size``; p = 1: one token
per pixel), N = (H / p)(W / p) of them in raster order, each flattened to p*p*C values, linearly
embedded to ``width`` and added to a learned position embedding [N, width]. Attention is
bidirectional (every token sees every token).

Conditioning (adaLN-Zero, Peebles & Xie 2023): c = MLP(sinusoidal(t)) + E[y], one vector per
example. Each block's two LayerNorms have no learned scale or shift of their own; instead
``[s1, a1, g1, s2, a2, g2] = Dense(silu(c))`` (6 x width, kernel and bias initialised to zero) and

    h <- h + g1 * Attn(LN(h) * (1 + a1) + s1)
    h <- h + g2 * MLP(LN(h) * (1 + a2) + s2)

(dropout on each residual branch when ``train``). The head is ``Dense(LN(h) * (1 + a) + s)`` with
``[s, a] = Dense(silu(c))`` and the projection back to p*p*C patch values, both zero-initialised.

Why zero: with every gate g = 0 each block is exactly the identity on the residual stream, and
with the zero output projection the untrained network returns exactly 0, i.e. it predicts
eps = 0 (the mean of the noise target), so training starts at loss E[eps^2] = 1 with no large
random-output transient. Gradients still flow: the output projection gets a non-zero gradient
at the first step (its input LN(h) is not zero), and once it is non-zero the gates and the
modulations get theirs, so the blocks switch on one after the other. Caveat: after a single
optimiser step only the head has moved, so the output depends on each token alone; attention
(mixing between tokens) needs a few more steps to show.

Mixed precision (``dtype=jnp.bfloat16``), as ``ardiff.models.transformer``: matmuls, layer norms
and activations run in ``dtype``; parameters stay float32, the sinusoidal time features and the
attention softmax are float32, and the output is cast to float32.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ardiff.kernels import attention as full_attention
from ardiff.models.embeddings import LabelEmbedding, sinusoidal_embedding

_zeros = nn.initializers.zeros


def patchify(x: jax.Array, p: int) -> jax.Array:
  """[B, H, W, C] -> [B, (H/p)(W/p), p*p*C]: patches in raster order, each row-major (i, j, c)."""
  b, height, width, c = x.shape
  x = x.reshape(b, height // p, p, width // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (height // p) * (width // p), p * p * c)


def unpatchify(tokens: jax.Array, height: int, width: int, p: int) -> jax.Array:
  """The inverse of :func:`patchify`: [B, N, p*p*C] -> [B, H, W, C]."""
  b, _, d = tokens.shape
  c = d // (p * p)
  x = tokens.reshape(b, height // p, width // p, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, height, width, c)


def modulate(h: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """h [B, N, W] * (1 + scale) + shift, with shift and scale [B, W] broadcast over tokens."""
  return h * (1 + scale[:, None, :]) + shift[:, None, :]


class DiTBlock(nn.Module):
  """Pre-LN transformer block with adaLN-Zero modulation from the conditioning vector c."""

  width: int
  heads: int
  mlp_ratio: int = 4
  dropout: float = 0.0
  dtype: Any = jnp.float32
  attention: str = "xla"

  @nn.compact
  def __call__(self, h: jax.Array, c: jax.Array, train: bool = False) -> jax.Array:
    """h [B, N, width], c [B, width] -> [B, N, width]."""
    dense = functools.partial(nn.Dense, dtype=self.dtype)
    ln = functools.partial(nn.LayerNorm, use_scale=False, use_bias=False, dtype=self.dtype)
    drop = nn.Dropout(self.dropout, deterministic=not train)
    mod = dense(6 * self.width, kernel_init=_zeros, bias_init=_zeros, name="adaln")(nn.silu(c))
    s1, a1, g1, s2, a2, g2 = jnp.split(mod, 6, axis=-1)

    b, n, _ = h.shape
    head_dim = self.width // self.heads
    qkv = dense(3 * self.width, name="qkv")(modulate(ln(name="ln1")(h), s1, a1))
    qkv = qkv.reshape(b, n, 3, self.heads, head_dim)
    # The AR transformer's attention (logits and softmax in float32 whatever the compute
    # dtype; XLA's or flash per `attention`); nothing is masked.
    attn = full_attention.attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], causal=False,
                                    impl=self.attention)
    attn = attn.reshape(b, n, -1)
    h = h + g1[:, None, :] * drop(dense(self.width, name="proj")(attn))

    mlp = dense(self.mlp_ratio * self.width, name="fc1")(modulate(ln(name="ln2")(h), s2, a2))
    mlp = dense(self.width, name="fc2")(nn.gelu(mlp))
    return h + g2[:, None, :] * drop(mlp)


class DiffusionTransformer(nn.Module):
  """Class- and time-conditional transformer denoiser; see the module docstring.

  Attributes:
    width, depth, heads, mlp_ratio: model size (width must be divisible by heads).
    num_classes: labels 0..num_classes-1; num_classes is the null label.
    patch_size: p, side of the square patches that become tokens (1: one token per pixel);
      H and W must be divisible by it.
    dropout: dropout rate on the residual branches (active when train=True).
    dtype: compute dtype (see ``ardiff.precision``); parameters and output stay float32.
    remat: recompute each block's activations in the backward pass (``nn.remat``): memory for
      compute, same gradients.
    attention: ``kernels.attention.IMPLS``, as the AR transformer's ("xla" or "flash").

  The position embedding is sized at init for the image size it first sees; applying the
  parameters to another size fails (flax's parameter shape check).
  """

  width: int
  depth: int
  heads: int
  num_classes: int
  patch_size: int = 1
  mlp_ratio: int = 4
  dropout: float = 0.0
  dtype: Any = jnp.float32
  remat: bool = False
  attention: str = "xla"

  def _check(self, x: jax.Array, t: jax.Array, y: jax.Array) -> None:
    for name in ("width", "heads", "patch_size", "mlp_ratio"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
    if self.depth < 0:
      raise ValueError(f"depth must be >= 0, got {self.depth}")
    if self.width % self.heads:
      raise ValueError(f"heads={self.heads} must divide width={self.width}")
    if x.ndim != 4:
      raise ValueError(f"x must be [B, H, W, C], got shape {x.shape}")
    b, height, width, _ = x.shape
    if height % self.patch_size or width % self.patch_size:
      raise ValueError(f"patch_size={self.patch_size} must divide the image height and width, "
                       f"got x of shape {x.shape}")
    if t.shape != (b,):
      raise ValueError(f"t must have shape ({b},), got {t.shape}")
    if y.shape != (b,):
      raise ValueError(f"y must have shape ({b},), got {y.shape}")

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array, train: bool = False) -> jax.Array:
    """x float [B, H, W, C], t float [B] in [0, 1], y int [B] -> float32 [B, H, W, C]."""
    self._check(x, t, y)
    dense = functools.partial(nn.Dense, dtype=self.dtype)
    _, height, width, _ = x.shape
    p = self.patch_size

    c = dense(self.width, name="time_in")(sinusoidal_embedding(t, self.width))
    c = dense(self.width, name="time_out")(nn.silu(c))
    c = c + LabelEmbedding(self.num_classes, self.width, dtype=self.dtype,
                           name="label")(y.astype(jnp.int32))

    patches = patchify(x.astype(self.dtype), p)
    pos = self.param("pos_emb", nn.initializers.normal(0.02), (patches.shape[1], self.width))
    h = dense(self.width, name="embed")(patches) + pos[None].astype(self.dtype)

    # `train` (argument 3, counting self) is a Python bool that selects dropout: static.
    block = nn.remat(DiTBlock, static_argnums=(3,)) if self.remat else DiTBlock
    for i in range(self.depth):
      h = block(self.width, self.heads, self.mlp_ratio, self.dropout, self.dtype,
                self.attention, name=f"block_{i}")(h, c, train)

    shift, scale = jnp.split(
        dense(2 * self.width, kernel_init=_zeros, bias_init=_zeros, name="final_adaln")(
            nn.silu(c)), 2, axis=-1)
    h = modulate(nn.LayerNorm(use_scale=False, use_bias=False, dtype=self.dtype,
                              name="ln_f")(h), shift, scale)
    out = dense(p * p * x.shape[-1], kernel_init=_zeros, bias_init=_zeros, name="out")(h)
    return unpatchify(out, height, width, p).astype(jnp.float32)
