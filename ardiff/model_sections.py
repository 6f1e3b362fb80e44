"""The model sections of a config (transformer, unet, diffusion, oneshot): their defaults and
their validation, owned by the builders that read them (`ardiff.build`).

Experiments assemble their configs from these and `ardiff.presets`; models are cached by a hash
of the sections that define them (`ardiff.model_cache`). Every bad value raises `ConfigError` naming
the key.
"""

from __future__ import annotations

import ml_collections

from ardiff.configs.validation import require, require_choice, require_positive
from ardiff.processes.gaussian.schedules import SCHEDULES
from ardiff.processes.gaussian.targets import TARGETS


def transformer_section(**overrides) -> ml_collections.ConfigDict:
  # remat: recompute activations in the backward pass (memory for compute; same model).
  # attention: "xla" or "flash" (ardiff.kernels.attention; same model, O(T) memory on TPU/GPU);
  # decode_attention: "xla" or "pallas" (ardiff.kernels.decode_attention).
  # block_size (no default, so existing models' cache keys stay): attention by blocks of this
  # many tokens (ardiff.models.transformer.Transformer.block_size), for blockwise processes.
  base = dict(width=64, depth=2, heads=4, dropout=0.1, p_uncond=0.1, remat=False,
              attention="xla", decode_attention="xla")
  base.update(overrides)
  return ml_collections.ConfigDict(base)


def unet_section(**overrides) -> ml_collections.ConfigDict:
  base = dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, num_heads=4, dropout=0.1)
  base.update(overrides)
  return ml_collections.ConfigDict(base)


def oneshot_section(**overrides) -> ml_collections.ConfigDict:
  base = dict(width=128, depth=2, p_uncond=0.1)
  base.update(overrides)
  return ml_collections.ConfigDict(base)


def diffusion_section(**overrides) -> ml_collections.ConfigDict:
  # No clip by default: point data is standardised by the process and every sampler starts at
  # sigma_max = 80, so nothing needs a data-range-specific clip (images set 1.0, their range).
  base = dict(schedule="cosine", num_timesteps=1000, target="eps", p_uncond=0.1, clip_x0=None)
  base.update(overrides)
  return ml_collections.ConfigDict(base)


def validate_diffusion(cfg: ml_collections.ConfigDict, prefix: str = "diffusion") -> None:
  require_choice(cfg.schedule, f"{prefix}.schedule", SCHEDULES.names())
  require_choice(cfg.target, f"{prefix}.target", TARGETS)
  require(isinstance(cfg.num_timesteps, int) and cfg.num_timesteps >= 2,
          f"{prefix}.num_timesteps", f"must be an integer >= 2, got {cfg.num_timesteps!r}")
  require(0.0 <= cfg.p_uncond <= 1.0, f"{prefix}.p_uncond", f"must lie in [0, 1], got {cfg.p_uncond}")
  require(cfg.clip_x0 is None or cfg.clip_x0 > 0, f"{prefix}.clip_x0",
          f"must be positive or None, got {cfg.clip_x0}")


def validate_unet_shape(cfg, shape: tuple[int, ...], prefix: str) -> None:
  """The UNet halves the resolution once per extra level: H and W must allow it."""
  factor = 2 ** (len(cfg.channel_mult) - 1)
  require(all(d % factor == 0 for d in shape[:2]), f"{prefix}.channel_mult",
          f"{list(cfg.channel_mult)} halves the resolution {len(cfg.channel_mult) - 1} time(s), "
          f"so image height and width must be divisible by {factor}; the data's images are "
          f"{shape[0]}x{shape[1]}")


def require_null_label(p_uncond: float, key: str) -> None:
  """Unconditional sampling and guidance use the null label, trained only by label dropout."""
  require(p_uncond > 0, key, f"must be > 0, got {p_uncond}: unconditional samples and guidance "
          "use the null label, which only label dropout (p_uncond) trains")


def validate_transformer(cfg, prefix: str) -> None:
  require_positive(cfg, prefix, "width", "depth", "heads")
  require(cfg.width % cfg.heads == 0, f"{prefix}.heads",
          f"width={cfg.width} must be divisible by heads={cfg.heads}")
  require(0 <= cfg.dropout < 1, f"{prefix}.dropout", f"must lie in [0, 1), got {cfg.dropout}")
  require(0 <= cfg.p_uncond <= 1, f"{prefix}.p_uncond", f"must lie in [0, 1], got {cfg.p_uncond}")
  from ardiff.kernels import attention, decode_attention

  require_choice(cfg.get("attention", "xla"), f"{prefix}.attention", attention.IMPLS)
  require_choice(cfg.get("decode_attention", "xla"), f"{prefix}.decode_attention",
                 decode_attention.IMPLS)
  block = cfg.get("block_size")
  require(block is None or (isinstance(block, int) and block >= 1), f"{prefix}.block_size",
          f"must be None or a positive integer, got {block!r}")
