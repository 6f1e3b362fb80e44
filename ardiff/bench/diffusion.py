"""Image diffusion on digits (8x8): UNet training steps and DDIM sampling through the process
contract (`process.sample(params, key, labels, "ddim:N")`), all timed interleaved in one run.
Every row has images/s: images trained on per second, or images sampled per second."""

from __future__ import annotations

TITLE = "Image diffusion on digits: training and DDIM sampling"
NOTE = ("images/s: training images per second for the train row, sampled images per second "
        "for the DDIM rows (unconditional, batch as shown).")


def rows(quick: bool = False) -> list[dict]:
  import jax
  import jax.numpy as jnp

  from ardiff import build
  from ardiff.bench import REPEATS
  from ardiff.bench.timer import interleaved
  from ardiff.bench.train import train_case, train_row
  from ardiff.presets import diffusion_section, unet_section
  from ardiff.data import load_dataset
  from ardiff.data.levels import levels_to_unit

  data = load_dataset("digits")
  unet = unet_section(base_channels=8) if quick else unet_section()
  process = build.build("gaussian", unet, data, diffusion=diffusion_section())
  batch = 64 if quick else 256
  x = levels_to_unit(data.x_train, data.num_levels)
  case = train_case("UNet training (digits 8x8)", process, x, data.y_train, batch,
                    3 if quick else 10)
  params = process.init_params(jax.random.key(0), {"x": jnp.asarray(x[:1]),
                                                   "y": jnp.asarray(data.y_train[:1])})
  labels = jnp.full((batch,), process.num_classes, jnp.int32)  # the null label
  sampling = {f"UNet DDIM {n} steps (sampling)": f"ddim:{n}"
              for n in ((2,) if quick else (10, 50))}
  fns = {case.name: case.fn}  # training and sampling interleaved in one run
  for name, spec in sampling.items():
    fns[name] = lambda spec=spec: process.sample(params, jax.random.key(0), labels, spec)
  timings = interleaved(fns, REPEATS)
  out = [train_row(case, timings[case.name], examples="images/s")]
  for name in sampling:
    t = timings[name]
    out.append({"model": name, "batch": batch, "ms/call": t.ms(), "images/s": batch / t.median})
  return out
