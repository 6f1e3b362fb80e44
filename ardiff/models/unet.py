"""A DDPM-style UNet denoiser for images, conditioned on time and a class label.

``UNet(...).apply(params, x, t, y, train=False)``: x float [B, H, W, C], t float32 [B] in (0, 1],
y int32 [B] in 0..num_classes (num_classes is the null label used by classifier-free guidance).
The output has x's shape (``out_channels`` overrides its channel count).

Layout: a 3x3 stem, then one level per entry of ``channel_mult`` with ``num_res_blocks``
residual blocks of ``base_channels * mult`` channels each, halving the resolution between
levels; a middle block (res, attention, res) at the lowest resolution; the mirror-image
upsampling path with skip connections; GroupNorm, SiLU and a 3x3 output conv.
The time embedding (``ardiff.models.embeddings.sinusoidal_embedding``, shared with the MLP
denoiser, then an MLP) plus a learned class embedding is added inside every residual block.
Self-attention runs at the lowest resolution when ``attn_at_lowest``.

Mixed precision (``dtype=jnp.bfloat16``): convolutions, norms, attention and activations run in
``dtype``; parameters stay float32, the sinusoidal time features are computed in float32 and the
output is cast to float32, so the loss and the sampler's arithmetic stay float32.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ardiff.models.embeddings import sinusoidal_embedding

# Largest number of GroupNorm groups; each group keeps at least this many channels when possible.
_MAX_GROUPS = 32
_MIN_CHANNELS_PER_GROUP = 4


def num_groups(channels: int) -> int:
  """The largest divisor of `channels` that is <= 32 and leaves >= 4 channels per group.

  Falls back to fewer channels per group (down to one group per channel) for tiny widths, so
  any positive channel count works.
  """
  if channels <= 0:
    raise ValueError(f"channels must be positive, got {channels}")
  limit = max(1, min(_MAX_GROUPS, channels // _MIN_CHANNELS_PER_GROUP))
  return max(g for g in range(1, limit + 1) if channels % g == 0)


class ResBlock(nn.Module):
  """GroupNorm -> SiLU -> conv, + projected embedding, GroupNorm -> SiLU -> dropout -> conv."""

  channels: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array, train: bool) -> jax.Array:
    conv = functools.partial(nn.Conv, dtype=self.dtype)
    h = nn.GroupNorm(num_groups=num_groups(x.shape[-1]), dtype=self.dtype)(x)
    h = conv(self.channels, (3, 3))(nn.silu(h))
    h = h + nn.Dense(self.channels, dtype=self.dtype)(nn.silu(emb))[:, None, None, :]
    h = nn.GroupNorm(num_groups=num_groups(self.channels), dtype=self.dtype)(h)
    h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
    h = conv(self.channels, (3, 3))(h)
    skip = x if x.shape[-1] == self.channels else conv(self.channels, (1, 1))(x)
    return skip + h


class AttnBlock(nn.Module):
  """Pre-norm multi-head self-attention over all spatial positions, with a residual."""

  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    tokens = nn.GroupNorm(num_groups=num_groups(c), dtype=self.dtype)(x).reshape(b, h * w, c)
    # Softmax in self.dtype too: it spans the lowest resolution only (<= 64 keys at 8x8), where
    # bf16's rounding of the sum is harmless (unlike the transformer's 785 keys).
    out = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, qkv_features=c,
                                          dtype=self.dtype)(tokens)
    return x + out.reshape(b, h, w, c)


class UNet(nn.Module):
  """Class- and time-conditional UNet; see the module docstring for the call signature."""

  base_channels: int
  channel_mult: tuple[int, ...] = (1, 2)
  num_res_blocks: int = 2
  attn_at_lowest: bool = True
  num_heads: int = 4
  dropout: float = 0.0
  num_classes: int = 10
  out_channels: int | None = None
  dtype: Any = jnp.float32  # compute dtype (see ardiff.precision); parameters stay float32

  def _check_inputs(self, x: jax.Array, t: jax.Array, y: jax.Array) -> None:
    if x.ndim != 4:
      raise ValueError(f"x must be [B, H, W, C], got shape {x.shape}")
    b, height, width, _ = x.shape
    if t.shape != (b,) or y.shape != (b,):
      raise ValueError(f"t and y must have shape ({b},), got t {t.shape} and y {y.shape}")
    if not self.channel_mult or self.num_res_blocks < 1:
      raise ValueError(
          f"need a non-empty channel_mult and num_res_blocks >= 1, "
          f"got channel_mult={self.channel_mult}, num_res_blocks={self.num_res_blocks}")
    factor = 2 ** (len(self.channel_mult) - 1)
    if height % factor or width % factor:
      raise ValueError(
          f"channel_mult={tuple(self.channel_mult)} halves the resolution "
          f"{len(self.channel_mult) - 1} times, so height and width must be divisible by "
          f"{factor}; got spatial size {height}x{width}")
    lowest = self.base_channels * self.channel_mult[-1]
    if self.attn_at_lowest and lowest % self.num_heads:
      raise ValueError(
          f"num_heads={self.num_heads} must divide the lowest-resolution width "
          f"base_channels * channel_mult[-1] = {lowest}")

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array, train: bool = False) -> jax.Array:
    self._check_inputs(x, t, y)
    dense = functools.partial(nn.Dense, dtype=self.dtype)
    conv = functools.partial(nn.Conv, dtype=self.dtype)
    res = functools.partial(ResBlock, dropout=self.dropout, dtype=self.dtype)
    attn = functools.partial(AttnBlock, self.num_heads, dtype=self.dtype)
    emb_dim = 4 * self.base_channels
    emb = sinusoidal_embedding(t, self.base_channels)
    emb = dense(emb_dim)(nn.silu(dense(emb_dim)(emb)))
    emb = emb + nn.Embed(self.num_classes + 1, emb_dim, dtype=self.dtype,
                         name="class_embed")(y.astype(jnp.int32))

    last = len(self.channel_mult) - 1
    h = conv(self.base_channels, (3, 3))(x)
    skips = [h]
    for level, mult in enumerate(self.channel_mult):
      for _ in range(self.num_res_blocks):
        h = res(self.base_channels * mult)(h, emb, train)
        if level == last and self.attn_at_lowest:
          h = attn()(h)
        skips.append(h)
      if level != last:
        h = conv(h.shape[-1], (3, 3), strides=(2, 2))(h)
        skips.append(h)

    h = res(h.shape[-1])(h, emb, train)
    if self.attn_at_lowest:
      h = attn()(h)
    h = res(h.shape[-1])(h, emb, train)

    for level in reversed(range(len(self.channel_mult))):
      for _ in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = res(self.base_channels * self.channel_mult[level])(h, emb, train)
        if level == last and self.attn_at_lowest:
          h = attn()(h)
      if level != 0:
        b, height, width, c = h.shape
        h = jax.image.resize(h, (b, 2 * height, 2 * width, c), method="nearest")
        h = conv(c, (3, 3))(h)

    h = nn.silu(nn.GroupNorm(num_groups=num_groups(h.shape[-1]), dtype=self.dtype)(h))
    # The output conv starts at zero (as in DDPM/ADM), so the untrained denoiser predicts 0 and
    # early training is stable. Only this last layer is zeroed: every residual block keeps a
    # normal init, so the time and class embeddings already shape the features feeding it and
    # reach the output as soon as this layer moves off zero (one optimiser step). The tests
    # check exactly that by perturbing this layer alone.
    out_channels = self.out_channels or x.shape[-1]
    out = conv(out_channels, (3, 3), kernel_init=nn.initializers.zeros, name="out_conv")(h)
    return out.astype(jnp.float32)
