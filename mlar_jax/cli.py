"""What every command-line entry point shares: flag parsing that turns config
override errors into one line, config validation that exits with the key,
and quieter orbax logs."""

from __future__ import annotations

import os
import sys

import ml_collections
from absl import flags, logging

from mlar_jax import validation

FLAGS = flags.FLAGS


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
    validation.validate(config)
  except ValueError as e:
    sys.exit(f"Invalid config: {e}")


def define_distributed_flags() -> None:
  """Flags of a multi-process launch (`initialize_distributed`)."""
  flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "on", "off"],
    "Start JAX's distributed runtime: auto = when launched as several "
    "processes (TPU pod VM, SLURM with several tasks, or the flags below).",
  )
  flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port of process 0 (explicit launches; auto-detected on TPU VMs and SLURM).",
  )
  flags.DEFINE_integer("num_processes", None, "Number of processes (explicit launches).")
  flags.DEFINE_integer("process_id", None, "This process's index (explicit launches).")


def _launched_as_several_processes() -> bool:
  env = os.environ
  if FLAGS.coordinator_address or env.get("JAX_COORDINATOR_ADDRESS"):
    return True
  if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env:
    return True
  # A multi-host Cloud TPU slice lists every worker.
  return "," in env.get("TPU_WORKER_HOSTNAMES", "")


def initialize_distributed() -> None:
  """`jax.distributed.initialize` when this is one of several processes.

  Call before anything touches a JAX backend. On CPU the collectives between
  processes run over gloo. Explicit flags win; otherwise JAX detects the
  cluster (TPU VM metadata, SLURM variables).
  """
  if FLAGS.distributed == "off" or (
    FLAGS.distributed == "auto" and not _launched_as_several_processes()
  ):
    return
  import jax  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=FLAGS.coordinator_address,
    num_processes=FLAGS.num_processes,
    process_id=FLAGS.process_id,
  )
  logging.info(
    "Process %d of %d (%d local devices of %d)",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
