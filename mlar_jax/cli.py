"""What every command-line entry point shares: flag parsing that turns config
override errors into one line, config validation that exits with the key,
fatal errors as one line (`fatal_errors`), quieter library logs, and the
start of JAX's distributed runtime."""

from __future__ import annotations

import contextlib
import logging as std_logging
import os
import socket
import sys
import time
import traceback
from typing import Iterator

import ml_collections
from absl import flags, logging
from etils import epath

from mlar_jax import validation

FLAGS = flags.FLAGS

# Before TensorFlow (imported by clu's writers and tfds) starts: its C++ INFO
# lines ("oneDNN custom operations are on") say nothing about this run.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

# XLA:CPU options of every command (read when JAX first uses the CPU, so
# setting them here, before any computation, is in time). YNNPACK fusions of
# dots, elementwise ops and reductions: the demo's training step took 20-23%
# less time with them (benchmarks/README.md, `step_vs_torch`); only the CPU
# backend reads xla_cpu_* options, so GPU and TPU compiles are unchanged. An
# option already in XLA_FLAGS wins (e.g. `--xla_cpu_experimental_ynn_fusion_type=`
# turns the fusions off).
CPU_XLA_FLAGS = {"xla_cpu_experimental_ynn_fusion_type": "dot,eltwise,reduce"}


def add_cpu_xla_flags() -> None:
  """Appends `CPU_XLA_FLAGS` to the XLA_FLAGS environment variable, each
  unless XLA_FLAGS already sets it."""
  current = os.environ.get("XLA_FLAGS", "")
  extra = [f"--{k}={v}" for k, v in CPU_XLA_FLAGS.items() if f"--{k}=" not in current]
  if extra:
    os.environ["XLA_FLAGS"] = " ".join([current, *extra]).strip()


add_cpu_xla_flags()

flags.DEFINE_bool(
  "verbose",
  False,
  "Print the traceback of a fatal error (also: environment variable MLAR_VERBOSE=1); "
  "by default a fatal error is one line, its traceback in WORKDIR/error.log.",
)


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


def _not_noise(record) -> bool:
  """False for library INFO records that say nothing about the run: orbax's
  (about 40 lines per checkpoint) and JAX's search for backends that this
  machine does not have (a TPU when libtpu is installed). orbax's errors keep
  their line but lose their traceback (a failed save logs four, hundreds of
  lines) unless `--verbose`: the error that ends the run says it once."""
  if "/orbax/" in record.pathname:
    # (Python's levels: absl's logging.WARNING is its own verbosity scale.)
    if record.levelno >= std_logging.ERROR and not _verbose():
      record.exc_info, record.exc_text = None, None
    return record.levelno >= std_logging.WARNING
  if record.levelno >= std_logging.WARNING:
    return True
  return not (record.name.startswith("jax") and "Unable to initialize backend" in record.msg)


def quiet_library_logs() -> None:
  """Drops `_not_noise` records from the absl handler (the root logger's,
  which every library's logs reach)."""
  handler = logging.get_absl_handler()
  if _not_noise not in handler.filters:
    handler.addFilter(_not_noise)


def setup(config: ml_collections.ConfigDict) -> None:
  """Validates `config` (exiting with a message naming the bad key) and quiets
  library INFO logs. Call first thing in `main`."""
  quiet_library_logs()
  try:
    validation.validate(config)
  except ValueError as e:
    sys.exit(f"Invalid config: {e}")


def _verbose() -> bool:
  env = os.environ.get("MLAR_VERBOSE", "").lower() not in ("", "0", "false")
  return env or (FLAGS.is_parsed() and FLAGS.verbose)


def _raised_here(error: BaseException) -> bool:
  """Whether `error` was raised by this project's code (its innermost frame)."""
  tb = error.__traceback__
  while tb is not None and tb.tb_next is not None:
    tb = tb.tb_next
  return tb is not None and f"{os.sep}mlar_jax{os.sep}" in tb.tb_frame.f_code.co_filename


def _one_line(error: BaseException) -> tuple[str, bool]:
  """The message of a fatal error as one line, and whether the project wrote
  it (False: a library's error, whose traceback may matter).

  Of the chain of exceptions (raise ... from, or raised while handling), the
  outermost one this project raised is the one written for the user; failing
  that the root cause says what happened (orbax and grain wrap an OSError or
  a worker's error in messages of their own).
  """
  chain: list[BaseException] = []
  e: BaseException | None = error
  while e is not None and e not in chain:
    chain.append(e)
    e = e.__cause__ or e.__context__
  ours = [x for x in chain if type(x).__module__.startswith("mlar_jax") or _raised_here(x)]
  pick = ours[0] if ours else chain[-1]
  message = " ".join(str(pick).split()) or repr(pick)
  if len(message) > 1000:
    message = message[:1000] + " ..."
  # The project's errors and these builtins' messages say what happened; any
  # other type (KeyError, a library's own) is part of the message.
  plain = type(pick).__module__.startswith("mlar_jax") or (
    isinstance(pick, (ValueError, OSError, RuntimeError)) and type(pick).__module__ == "builtins"
  )
  return (message if plain else f"{type(pick).__name__}: {message}"), bool(ours)


@contextlib.contextmanager
def fatal_errors(workdir: str | None = None) -> Iterator[None]:
  """Ends the process with one line on stderr ("Error: ...") and exit code 1
  for any error raised inside (a bad config, data, checkpoint, disk,
  divergence, ...).

  The code inside has already shut its checkpoint manager and writers down
  (their `finally` blocks ran while the error propagated). The traceback is
  written to `WORKDIR/error.log` (process 0; `error.pN.log` for others), and
  printed instead with `--verbose` or MLAR_VERBOSE=1.
  """
  try:
    yield
  except Exception as e:  # noqa: BLE001  (every error ends here; bugs too)
    if _verbose():
      raise
    log = None
    if workdir:
      import jax  # pylint: disable=g-import-not-at-top

      index = jax.process_index()
      log = epath.Path(workdir) / ("error.log" if index == 0 else f"error.p{index}.log")
      try:
        log.write_text(f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n{traceback.format_exc()}")
      except Exception:  # noqa: BLE001  (a full disk, say: the line still goes out)
        log = None
    message, written_for_the_user = _one_line(e)
    # A message of this project's says what to do; a library's error may
    # need its traceback.
    where = f" (traceback: {log}; --verbose prints it)" if log and not written_for_the_user else ""
    print(f"Error: {message}{where}", file=sys.stderr, flush=True)
    # What threads of orbax and TensorStore print while the interpreter shuts
    # down after a failed save ("Event loop is closed", pages of it) goes to
    # the log, so the line above stays the last one.
    target = os.open(os.fspath(log) if log else os.devnull, os.O_WRONLY | os.O_APPEND)
    os.dup2(target, sys.stderr.fileno())
    sys.exit(1)


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
  flags.DEFINE_integer(
    "distributed_timeout",
    300,
    "Seconds every process waits for the others (and for the coordinator) at start-up.",
  )


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

  address = FLAGS.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  if address and FLAGS.process_id is not None:
    _check_coordinator(address, FLAGS.process_id, FLAGS.distributed_timeout)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=FLAGS.coordinator_address,
    num_processes=FLAGS.num_processes,
    process_id=FLAGS.process_id,
    initialization_timeout=FLAGS.distributed_timeout,
  )
  logging.info(
    "Process %d of %d (%d local devices of %d)",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )


def _check_coordinator(address: str, process_id: int, timeout: float) -> None:
  """Fails in one line where JAX's runtime would abort the process (a C++
  fatal error and a stack trace): process 0 cannot listen on the
  coordinator's port, or another process cannot reach it in `timeout` s.

  Raises:
    RuntimeError naming the address and what to check.
  """
  host, _, port = address.rpartition(":")
  if not port.isdigit():
    raise RuntimeError(f"--coordinator_address={address}: expected HOST:PORT")
  if process_id == 0:
    with socket.socket() as s:
      s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
      try:
        s.bind(("", int(port)))
      except OSError as e:
        raise RuntimeError(
          f"Process 0 cannot serve the coordinator on port {port} ({e.strerror}): "
          "choose a free port in --coordinator_address"
        ) from e
    return
  deadline = time.monotonic() + timeout
  while True:
    try:
      socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
      return
    except OSError as e:
      if time.monotonic() > deadline:
        raise RuntimeError(
          f"Process {process_id} could not reach the coordinator at {address} in {timeout} s "
          f"({e.strerror or e}): is process 0 running, and is the port open between the hosts? "
          "(--distributed_timeout sets the wait)"
        ) from e
      time.sleep(0.5)
