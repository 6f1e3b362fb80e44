"""Float64 for the modules whose references are float64 transcriptions or peers."""

import contextlib

import jax


@contextlib.contextmanager
def float64():
  """jax_enable_x64 on inside the block, then back to what it was (a module fixture's body:
  other modules on the same pytest worker keep float32)."""
  old = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  try:
    yield
  finally:
    jax.config.update("jax_enable_x64", old)
