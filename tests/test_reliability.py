"""Failures a user or a hostile tester can cause, reproduced, and what the
system now does (issue 18).

One section per part of the issue.
"""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config, run_main

from mlar_jax import validation
from mlar_jax.data import sources
from mlar_jax.models import registry as models

# ----------------------------------------------------------------------------
# Strict annotations (issue 18, item 5): malformed rows, duplicate ids,
# impossible segments, undecodable bytes and unclosed quotes are rejected
# with `path:line: why`; every file valid before stays valid.
# ----------------------------------------------------------------------------

CLASSES = "c000 Holding a cup\nc001 Opening a door\n"
HEADER = "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length"


def _row(vid, actions="c000 0.00 2.00", script='"a script"'):
  return f'{vid},S1,Kitchen,6,7,Yes,{script},cup,"desc",{actions},4.0'


def _charades(tmp_path, body, classes=CLASSES):
  """sources.charades on `HEADER + body` (str, or bytes to write as they are)."""
  classes_file = tmp_path / "classes.txt"
  if isinstance(classes, bytes):
    classes_file.write_bytes(classes)
  else:
    classes_file.write_text(classes)
  data = body if isinstance(body, bytes) else body.encode()
  (tmp_path / "train.csv").write_bytes(HEADER.encode() + b"\n" + data)
  return sources.charades(
    "train",
    root=str(tmp_path),
    train_csv="train.csv",
    test_csv="",
    classes="classes.txt",
    videos="v",
    frames=False,
    video_ext=".mp4",
    fps=24.0,
  )


def _video_list(tmp_path, body, header):
  (tmp_path / "names.txt").write_text("running\njumping\n")
  (tmp_path / "list.csv").write_bytes(body if isinstance(body, bytes) else body.encode())
  return sources.video_list(
    "train",
    root=str(tmp_path),
    csv_file="list.csv",
    classes="names.txt",
    videos="",
    fps=30,
    header=header,
  )


def test_valid_charades_files_stay_accepted(tmp_path):
  # No actions, a zero-length segment, blank lines, a quoted field spanning
  # two lines and doubled quotes: all valid CSV, all read as before.
  body = "\n".join(
    [
      _row("GOOD1", ""),
      _row("GOOD2", "c001 3.00 3.00;c000 0.00 1.50", script='"he said ""hi""\nand left"'),
      "",
      _row("GOOD3"),
    ]
  )
  videos = _charades(tmp_path, body + "\n")
  assert videos.video_ids() == ["GOOD1", "GOOD2", "GOOD3"]
  np.testing.assert_array_equal(videos.label_matrix(), [[0, 0], [1, 1], [1, 0]])
  np.testing.assert_allclose(videos[1]["segments"], [[1, 3.0, 3.0], [0, 0.0, 1.5]])


def test_charades_truncated_row(tmp_path):
  # Was accepted as an unlabelled video (csv.DictReader fills missing fields
  # with None).
  body = f"{_row('GOOD1')}\n{_row('GOOD2')}\nGOOD3,S,Kitchen\n"
  with pytest.raises(ValueError, match=r"train\.csv:4: 3 fields, the header has 11"):
    _charades(tmp_path, body)


def test_charades_extra_fields(tmp_path):
  with pytest.raises(ValueError, match=r"train\.csv:3: 12 fields, the header has 11"):
    _charades(tmp_path, f"{_row('GOOD1')}\n{_row('GOOD2')},extra\n")


def test_charades_duplicate_id_names_both_lines(tmp_path):
  body = f"{_row('GOOD1')}\n{_row('GOOD2')}\n{_row('GOOD1', 'c001 0.0 1.0')}\n"
  with pytest.raises(
    ValueError, match=r"train\.csv:4: duplicate video id 'GOOD1' \(also on line 2\)"
  ):
    _charades(tmp_path, body)


def test_charades_empty_id(tmp_path):
  with pytest.raises(ValueError, match=r"train\.csv:2: empty video id"):
    _charades(tmp_path, _row("") + "\n")


@pytest.mark.parametrize(
  "action", ["c001 5.00 2.00", "c001 -1.00 2.00", "c001 0.00 nan", "c001 0.00 inf"]
)
def test_charades_impossible_segment(tmp_path, action):
  body = f"{_row('GOOD1')}\n{_row('GOOD2', 'c000 0.0 1.0;' + action)}\n"
  with pytest.raises(
    ValueError, match=rf"train\.csv:3: impossible segment in action '{re.escape(action)}'"
  ):
    _charades(tmp_path, body)


def test_charades_non_utf8_byte(tmp_path):
  # Was a bare UnicodeDecodeError with a byte offset and no file.
  body = _row("GOOD1").encode() + b"\n" + _row("GOOD2", script="caf\xe9").encode("latin-1")
  with pytest.raises(ValueError, match=r"train\.csv:3: not UTF-8 \(byte 0xe9 at column 29"):
    _charades(tmp_path, body + b"\n")


@pytest.mark.parametrize("where", ["middle", "last"])
def test_charades_unclosed_quote_names_the_line_it_opens(tmp_path, where):
  # Was reported as a bad action on a later line (the quote swallows the
  # next row), or accepted when the quote was the file's last.
  unclosed = 'GOOD2,S1,Kitchen,6,7,Yes,"an unclosed script,cup,desc,c000 0.00 2.00,4.0'
  rows = [_row("GOOD1"), unclosed, _row("GOOD3")]
  if where == "last":
    rows = [rows[0], rows[2], rows[1]]
  line = 3 if where == "middle" else 4
  with pytest.raises(ValueError, match=rf"train\.csv:{line}: malformed CSV row .*unclosed"):
    _charades(tmp_path, "\n".join(rows) + "\n")


def test_charades_lines_count_multiline_rows(tmp_path):
  # A row after a quoted field spanning lines 2-3 starts on line 4.
  body = _row("GOOD1", script='"two\nlines"') + "\n" + _row("GOOD1") + "\n"
  with pytest.raises(
    ValueError, match=r"train\.csv:4: duplicate video id 'GOOD1' \(also on line 2"
  ):
    _charades(tmp_path, body)


def test_class_file_non_utf8_and_duplicates(tmp_path):
  with pytest.raises(ValueError, match=r"classes\.txt:2: not UTF-8 \(byte 0xff at column 6"):
    _charades(tmp_path, _row("GOOD1") + "\n", classes=b"c000 a\nc001 \xff\n")
  with pytest.raises(
    ValueError, match=r"classes\.txt:3: duplicate class 'c000 a' \(also on line 1\)"
  ):
    _charades(tmp_path, _row("GOOD1") + "\n", classes="c000 a\nc001 b\nc000 a\n")


@pytest.mark.parametrize(
  "header,body,message",
  [
    (
      False,
      "a.mp4,running\nb.mp4\na.mp4,jumping\n",
      r"list\.csv:3: duplicate video id 'a' \(also on line 1\)",
    ),
    (
      True,
      "id,path,labels\nx,x.mp4,running\nx,y.mp4,\n",
      r"list\.csv:3: duplicate video id 'x' \(also on line 2\)",
    ),
    (
      True,
      "id,path,labels\nx,x.mp4,running\ny,y.mp4\n",
      r"list\.csv:3: 2 fields, the header has 3",
    ),
    (False, "a.mp4,running\n,jumping\n", r"list\.csv:2: empty video path"),
    (
      False,
      b"a.mp4,running\nb\xff.mp4,jumping\n",
      r"list\.csv:2: not UTF-8 \(byte 0xff at column 2",
    ),
    (True, 'id,path,labels\nx,"x.mp4,running\n', r"list\.csv:2: malformed CSV row"),
  ],
  ids=["duplicate", "duplicate-header", "fields", "empty-path", "utf8", "quote"],
)
def test_video_list_rejects(tmp_path, header, body, message):
  with pytest.raises(ValueError, match=message):
    _video_list(tmp_path, body, header)


# ----------------------------------------------------------------------------
# Early validation (issue 18, item 4): every value whose validity is known
# before training fails before training, naming the key.
# ----------------------------------------------------------------------------


def _set(config, key, value):
  node, path = config, key.split(".")
  for part in path[:-1]:
    node = node[part]
  node[path[-1]] = value


@pytest.mark.parametrize(
  "arg,key,value,message",
  [
    (
      "runlocal",
      "eval.output",
      "logitz",
      "config.eval.output='logitz': model.head='linear' outputs only ['logits']",
    ),
    (
      "runlocal,head=mlar",
      "eval.output",
      "logitz",
      "model.head='mlar' outputs only ['logits', 'logits_activity']",
    ),
    ("runlocal", "optimizer.momentum", 5, "config.optimizer.momentum=5.0: must be in [0, 1)"),
    ("runlocal", "optimizer.momentum", 1.0, "config.optimizer.momentum=1.0: must be in [0, 1)"),
    ("runlocal", "optimizer.momentum", -0.1, "config.optimizer.momentum=-0.1"),
    ("runlocal", "optimizer.weight_decay", -1e-4, "config.optimizer.weight_decay=-0.0001: must"),
    ("runlocal", "optimizer.grad_clip_norm", -1.0, "config.optimizer.grad_clip_norm=-1.0: must"),
    ("runlocal", "schedule.base_lr", 0.0, "config.schedule.base_lr=0.0: must be finite and > 0"),
    ("runlocal", "schedule.base_lr", float("inf"), "config.schedule.base_lr=inf: must be"),
    ("runlocal", "schedule.warmup_steps", -1, "config.schedule.warmup_steps=-1: must be in"),
    ("runlocal", "schedule.warmup_steps", 7, "config.schedule.warmup_steps=7: must be in"),
    ("runlocal", "schedule.end_lr_factor", 1.5, "config.schedule.end_lr_factor=1.5: must be"),
    ("runlocal", "seed", -1, "config.seed=-1: must be an integer in [0, 2**32)"),
    ("runlocal", "seed", 2**32, "config.seed=4294967296: must be an integer in [0, 2**32)"),
    ("runlocal", "data.synthetic.seed", -1, "config.data.synthetic.seed=-1: must be"),
  ],
)
def test_validate_rejects_before_training(arg, key, value, message):
  config = load_config("synthetic", arg)
  _set(config, key, value)
  with pytest.raises(ValueError, match=re.escape(message)):
    validation.validate(config)


def test_eval_output_follows_the_head():
  config = load_config("synthetic", "runlocal,head=mlar")
  config.eval.output = "logits_activity"
  validation.validate(config)
  config.model.mlar.use_correlation = False
  with pytest.raises(
    ValueError,
    match=re.escape(
      "config.eval.output='logits_activity': model.head='mlar' with "
      "model.mlar.use_correlation=False outputs only ['logits']"
    ),
  ):
    validation.validate(config)


@pytest.mark.parametrize("head,correlation", [("linear", True), ("mlar", True), ("mlar", False)])
def test_head_outputs_match_the_built_model(head, correlation):
  # The static description validation uses is what the model returns.
  cfg = load_config("synthetic", f"runlocal,head={head}").model
  cfg.mlar.use_correlation = correlation
  model = models.build_model(cfg, num_classes=3)
  video = jax.ShapeDtypeStruct((1, 4, 16, 16, 3), jnp.float32)
  outputs, _ = jax.eval_shape(
    lambda v: model.init_with_output(jax.random.key(0), v, train=False), video
  )
  assert sorted(outputs) == sorted(models.head_outputs(cfg))


def test_cli_bad_eval_output_fails_before_training_in_one_line(tmp_path):
  proc = run_main(tmp_path / "w", "--config.eval.output=logitz")
  assert proc.returncode != 0
  last = proc.stderr.strip().splitlines()[-1]
  assert last == (
    "Invalid config: config.eval.output='logitz': model.head='linear' outputs only ['logits']"
  )
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_cli_adds_its_cpu_xla_flags_unless_xla_flags_sets_them(monkeypatch):
  from mlar_jax import cli

  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  cli.add_cpu_xla_flags()
  assert os.environ["XLA_FLAGS"] == (
    "--xla_force_host_platform_device_count=2 "
    "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce"
  )
  cli.add_cpu_xla_flags()  # idempotent
  assert os.environ["XLA_FLAGS"].count("ynn_fusion_type") == 1
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")  # the user's: off
  cli.add_cpu_xla_flags()
  assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type="
  monkeypatch.delenv("XLA_FLAGS")
  cli.add_cpu_xla_flags()
  assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce"
