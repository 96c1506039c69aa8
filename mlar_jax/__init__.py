"""mlar_jax: multi-label video activity recognition in JAX/Flax."""

__version__ = "0.1.0"
