"""What every command-line entry point shares: flag parsing that turns config
override errors into one line, config validation that exits with the key,
and quieter orbax logs."""

from __future__ import annotations

import sys

import ml_collections
from absl import flags
from absl import logging

from mlar_jax import config_lib


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing (pass as `app.run(main, flags_parser=parse_flags)`),
  with config override errors turned into one line that names the override
  (ml_collections raises a bare AttributeError/KeyError)."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError, TypeError, ValueError, flags.Error) as e:
    bad = [a for a in argv[1:] if a.startswith("--config.")]
    message = " ".join(str(e).replace("\\n", " ").replace("\\", "").replace("'", "").split())
    sys.exit(f"Invalid config override among {bad or argv[1:]}: {message}")


def _quiet_orbax(record) -> bool:
  # orbax logs every save step at INFO; keep its warnings and errors only.
  return "/orbax/" not in record.pathname or record.levelno >= logging.WARNING


def setup(config: ml_collections.ConfigDict) -> None:
  """Validates `config` (exiting with a message naming the bad key) and quiets
  orbax's INFO logs. Call first thing in `main`."""
  # ABSLHandler.handle forwards to its python_handler, whose filters apply.
  logging.get_absl_handler().python_handler.addFilter(_quiet_orbax)
  try:
    config_lib.validate(config)
  except ValueError as e:
    sys.exit(f"Invalid config: {e}")
