"""Config validation: every owner checks its part of the config.

One call before anything is built, compiled or read: an unknown name or an
invalid value fails with one line naming the key and, for names, the
allowed values (each owner's one list of them: the registries, `DTYPES`,
`CLASS_WEIGHT_MODES`, `OPTIMIZERS`, ...). Unknown keys never get this far:
configs are locked ml_collections dicts.
"""

from __future__ import annotations

import ml_collections

from mlar_jax import config_lib, losses, optimizers, sharding
from mlar_jax.data import pipeline, sampling
from mlar_jax.models import registry as models


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every value of `config`; raises ValueError naming the key."""
  config_lib.validate(config)  # the loop's own keys
  pipeline.validate_config(config)  # data.*, eval.split
  sampling.validate_config(config)  # eval.views, aggregate, batch size
  models.validate_config(config)  # model.*
  losses.validate_config(config)  # loss.*
  optimizers.validate_config(config)  # optimizer.*, schedule.*
  sharding.validate_config(config)  # mesh.*, sharding.*
