"""ardiff: autoregression and diffusion as removal processes, compared on one footing, in JAX."""

__version__ = "0.1.0"  # the package's one version: pyproject.toml reads it (tool.setuptools.dynamic)
