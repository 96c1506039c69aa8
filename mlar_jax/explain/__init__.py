"""Looking inside trained models: class activation maps, MLAR activity maps,
their localisation against the scenes dataset's ground truth, and pictures.

`python -m mlar_jax.explain SUBCOMMAND --config ... --workdir ...` (see
`__main__.py`). Everything here reads a workdir; nothing changes training.
"""
