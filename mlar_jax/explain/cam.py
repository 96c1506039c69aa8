"""Class activation maps of both heads, MLAR activity maps, and multi-label
CAM with region separation (M-MiT section 5.1).

Notation: a clip's last backbone feature map F [T, H, W, C] (P = T*H*W
positions p), A classes.

Linear head (`logits = W^T mean_p F_p + b`, CAM of Zhou et al. 2016):
  CAM_c(p) = W[:, c] . F_p, so mean_p CAM_c(p) + b_c = logits_c.

MLAR head (`heads.MLARHead`), through its activity-specific path. With
g^alpha_k(F)_p = W^alpha_k F_p (grouped, eq. 7), Attn_O [K, P] and Attn_A
[A, K] from the same forward pass, the part of activity a's feature that
comes from position p is
  v_a(p) = sum_k Attn_A[a, k] Attn_O[k, p] g^alpha_k(F)_p          [C'],
and sum_p v_a(p) = F_A[a] exactly (eqs. 1, 2, 5). Then
  "logits_activity" (eq. 11):  CAM_a(p) = w_phi . v_a(p)
  "logits" (eqs. 8, 12):       CAM_j(p) = w_theta . sum_a Corr[j, a] v_a(p),
                               Corr = Attn_C + Mask,
so sum_p CAM_a(p) + bias_a = the head's logit (per-activity output weights
w[a] in the `use_activity_specific=False` ablation, whose Attn_A is the
uniform 1/K of its mean observation). The activity map of MLAR section 7
("Attn_O and Attn_A applied on F_f") is the length of that contribution,
  M_a(p) = || v_a(p) ||_2,
which is independent of the output layer: where activity a's feature comes
from, however it is then classified.

Multi-label CAM (M-MiT 5.1), per clip, on the maps of the predicted classes
upsampled to the frames and normalised to [0, 1] per class over the clip:
  1. region separation: for each pair of classes (i, j) whose maps' cosine
     distance 1 - cos(M_i, M_j) exceeds `distance_threshold` (1e-4), the
     pixels where both are active (>= `active_threshold`, 0.5) are set to
     zero in both maps; all pairs are compared on the maps before any
     erasing, so the result does not depend on the order of the classes;
  2. the maximum over classes;
  3. a 5x5 Gaussian smoothing of each frame (sigma 1.1, OpenCV's for a 5x5
     kernel with sigma 0; borders reflected without repeating the edge, as
     OpenCV's default).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mlar_jax.data import transforms

Variables = dict[str, Any]  # {"params": ..., "model_state": ...}


@dataclasses.dataclass(frozen=True)
class Forward:
  """What one forward pass of a classifier gives the maps.

  Attributes:
    outputs: {name: [B, A] float32 logits}, the model's outputs.
    fmap: [B, T, H, W, C] float32, the backbone's last feature map.
    pooled: [B, D] float32, the backbone's clip feature.
    head: the head's sown intermediates by name (MLAR: attn_obs [B, K, T, H,
      W], attn_activity [B, A, K], attn_corr [B, A, A]); empty for the linear
      head.
  """

  outputs: dict[str, np.ndarray]
  fmap: np.ndarray
  pooled: np.ndarray
  head: dict[str, np.ndarray]


def _backbone_call(module: nn.Module, method: str) -> bool:
  return module.path == ("backbone",) and method == "__call__"


def apply_capturing(
  model: nn.Module,
  variables: Variables,
  video: jax.Array,
  wanted: Callable[[nn.Module, str], bool],
) -> tuple[dict[str, jax.Array], dict[str, Any]]:
  """`model.apply` in eval mode, as evaluation calls it, also returning the
  "intermediates" collection: what the modules sow, and the outputs of the
  (module, method) pairs `wanted` selects (flax `capture_intermediates`)."""
  outputs, state = model.apply(
    {"params": variables["params"], **variables["model_state"]},
    video,
    train=False,
    capture_intermediates=wanted,
    mutable=["intermediates"],
  )
  return outputs, state["intermediates"]


def forward_fn(model: nn.Module) -> Callable[[Variables, jax.Array], Forward]:
  """`forward` of `model` with the model's pass jitted once: for many clips."""

  @jax.jit
  def run(variables, video):
    outputs, inter = apply_capturing(model, variables, video, _backbone_call)
    (features,) = inter["backbone"]["__call__"]
    head = {k: v[0] for k, v in inter.get("head", {}).items()}
    return outputs, features["map"], features["pooled"], head

  def fwd(variables: Variables, video: jax.Array) -> Forward:
    outputs, fmap, pooled, head = jax.device_get(run(variables, video))
    as_np = lambda tree: {k: np.asarray(v, np.float32) for k, v in tree.items()}
    return Forward(
      outputs=as_np(outputs),
      fmap=np.asarray(fmap, np.float32),
      pooled=np.asarray(pooled, np.float32),
      head=as_np(head),
    )

  return fwd


def forward(model: nn.Module, variables: Variables, video: jax.Array) -> Forward:
  """Runs `model` (a `models.registry.VideoClassifier`) once in eval mode and
  keeps its backbone output and the head's sown attention maps.

  The same `apply` as evaluation, with flax's `capture_intermediates` for
  the backbone's output: the outputs are the model's, unchanged.

  Args:
    model: backbone then head.
    variables: {"params", "model_state"} (as `checkpointing.load_variables`).
    video: [B, T, S, S, 3] normalised frames (`transforms.normalize`).
  """
  return forward_fn(model)(variables, video)


def linear_cams(fwd: Forward, variables: Variables, output: str = "logits") -> np.ndarray:
  """CAM_c(p) = W[:, c] . F_p of the linear head.

  Args:
    fwd: the forward pass.
    variables: the model's variables (the classifier's kernel [C, A]).
    output: must be "logits", the head's only output.

  Returns:
    [B, A, T, H, W] float32; mean over (T, H, W) + bias = the logits.

  Raises:
    ValueError when the backbone's clip feature is not the mean of its map
    (X3D projects it), where a CAM of the map does not exist.
  """
  if output != "logits":
    raise ValueError(f"the linear head has one output, 'logits', not {output!r}")
  if not np.allclose(fwd.pooled, fwd.fmap.mean(axis=(1, 2, 3)), rtol=1e-4, atol=1e-5):
    raise ValueError(
      "CAM needs the clip feature to be the mean of the feature map; this backbone "
      "transforms it after pooling"
    )
  kernel = np.asarray(variables["params"]["head"]["classifier"]["kernel"], np.float32)
  return np.einsum("bthwc,ca->bathw", fwd.fmap, kernel)


def mlar_contributions(fwd: Forward, head_params: dict[str, Any]) -> np.ndarray:
  """v_a(p) = sum_k Attn_A[a, k] Attn_O[k, p] W^alpha_k F_p (module docstring).

  Args:
    fwd: a forward pass of a model with the MLAR head.
    head_params: `params["head"]`.

  Returns:
    [B, A, T, H, W, C'] float32; the sum over (T, H, W) is F_A.
  """
  w_alpha = np.asarray(head_params["obs_alpha"], np.float32)  # [K, n, C/n, C'/n]
  k, n = w_alpha.shape[:2]
  b, t, h, w, c = fwd.fmap.shape
  f = fwd.fmap.reshape(b, t * h * w, n, c // n)
  attn_obs = fwd.head["attn_obs"].reshape(b, k, t * h * w)
  a = head_params["out_activity_bias"].shape[0]
  # The ablation without activity-specific features averages the observations.
  attn_act = fwd.head.get("attn_activity", np.full((b, a, k), 1.0 / k, np.float32))
  # Observation k's value at p, weighted by how much activity a draws from it.
  g = np.einsum("bpgc,kgcd->bkpgd", f, w_alpha).reshape(b, k, t * h * w, -1)
  v = np.einsum("bak,bkp,bkpd->bapd", attn_act, attn_obs, g)
  return v.reshape(b, a, t, h, w, -1)


def _output_weights(head_params: dict[str, Any], name: str, num_classes: int) -> np.ndarray:
  """[A, C'] output weights: shared [C'] broadcast, or per activity."""
  kernel = np.asarray(head_params[f"{name}_kernel"], np.float32)
  return np.broadcast_to(kernel, (num_classes, kernel.shape[-1]))


def mlar_cams(fwd: Forward, variables: Variables, output: str = "logits_activity") -> np.ndarray:
  """CAMs of the MLAR head's `output` (module docstring).

  Args:
    fwd: the forward pass.
    variables: the model's variables.
    output: "logits_activity" (from F_A) or "logits" (from F_AC; from F_A
      when the head has no correlation map).

  Returns:
    [B, A, T, H, W] float32; the sum over (T, H, W) + bias = the logits.
  """
  hp = variables["params"]["head"]
  if output not in fwd.outputs:
    raise ValueError(f"output {output!r} is not one of the head's {sorted(fwd.outputs)}")
  v = mlar_contributions(fwd, hp)
  a = v.shape[1]
  if output == "logits" and "out_corr_kernel" in hp:
    corr = fwd.head["attn_corr"] + np.asarray(
      variables["model_state"]["constants"]["head"]["correlation_mask"], np.float32
    )
    w = _output_weights(hp, "out_corr", a)
    return np.einsum("bja,bathwd,jd->bjthw", corr, v, w)
  w = _output_weights(hp, "out_activity", a)
  return np.einsum("bathwd,ad->bathw", v, w)


def activity_maps(fwd: Forward, variables: Variables) -> np.ndarray:
  """MLAR section 7's activity-specific feature maps, M_a(p) = ||v_a(p)||_2.

  Returns:
    [B, A, T, H, W] float32, non-negative.
  """
  return np.linalg.norm(mlar_contributions(fwd, variables["params"]["head"]), axis=-1)


# config.model.head -> fn(forward, variables, output) -> [B, A, T, H, W] CAMs.
CAMS: dict[str, Callable[..., np.ndarray]] = {"linear": linear_cams, "mlar": mlar_cams}
# The output a head's CAM explains by default: the MLAR head's activity path.
DEFAULT_OUTPUT = {"linear": "logits", "mlar": "logits_activity"}


def class_maps(
  head: str, fwd: Forward, variables: Variables, output: str | None = None
) -> np.ndarray:
  """The CAMs of head `head` (`config.model.head`), [B, A, T, H, W].

  `output` None: `DEFAULT_OUTPUT`, or "logits" when the head has only that.
  """
  if head not in CAMS:
    raise ValueError(f"no CAM for head {head!r}; heads with one: {sorted(CAMS)}")
  if output is None:
    output = DEFAULT_OUTPUT[head] if DEFAULT_OUTPUT[head] in fwd.outputs else "logits"
  return CAMS[head](fwd, variables, output)


def upsample(maps: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
  """Trilinear resize of maps [..., t, h, w] to [..., T, H, W] (pixel
  centres aligned, as `jax.image.resize`)."""
  shape = maps.shape[:-3] + tuple(size)
  return np.asarray(jax.image.resize(jnp.asarray(maps, jnp.float32), shape, "linear"))


def normalize(maps: np.ndarray, axes: tuple[int, ...] = (-3, -2, -1)) -> np.ndarray:
  """Min-max normalisation to [0, 1] over `axes` (per class, over the whole
  clip by default); a constant map becomes zeros."""
  lo = maps.min(axis=axes, keepdims=True)
  span = maps.max(axis=axes, keepdims=True) - lo
  return np.where(span > 0, (maps - lo) / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)


def cosine_distances(maps: np.ndarray) -> np.ndarray:
  """1 - cosine similarity of every pair of maps [N, ...] (flattened): [N, N].
  A zero map is at distance 1 from every map."""
  flat = maps.reshape(len(maps), -1).astype(np.float64)
  norm = np.linalg.norm(flat, axis=1)
  unit = flat / np.where(norm > 0, norm, 1.0)[:, None]
  return 1.0 - unit @ unit.T


def separate_regions(
  maps: np.ndarray, distance_threshold: float = 1e-4, active_threshold: float = 0.5
) -> np.ndarray:
  """M-MiT 5.1's region separation of the normalised maps [N, ...] of N
  predicted classes (module docstring, step 1).

  Returns:
    [N, ...], `maps` with zeros where a class is active together with a
    class whose map is farther than `distance_threshold`.
  """
  dist = cosine_distances(maps)
  separate = dist > distance_threshold
  np.fill_diagonal(separate, False)
  active = (maps >= active_threshold).reshape(len(maps), -1)
  # Pixel x of class i is erased when some class j that i separates from is
  # active there too.
  clash = (separate.astype(np.int32) @ active.astype(np.int32)) > 0
  erase = (active & clash).reshape(maps.shape)
  return np.where(erase, 0.0, maps).astype(maps.dtype)


def gaussian_kernel(size: int = 5, sigma: float | None = None) -> np.ndarray:
  """The 1D Gaussian [size], summing to 1; sigma None: OpenCV's default for
  the size, 0.3 ((size - 1) / 2 - 1) + 0.8 (1.1 for 5)."""
  if sigma is None:
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
  x = np.arange(size) - (size - 1) / 2
  k = np.exp(-(x**2) / (2 * sigma**2))
  return k / k.sum()


def smooth(maps: np.ndarray, size: int = 5, sigma: float | None = None) -> np.ndarray:
  """Separable size x size Gaussian smoothing over the last two axes of
  [..., H, W], borders reflected without repeating the edge pixel."""
  k = gaussian_kernel(size, sigma)
  r = size // 2
  x = np.asarray(maps, np.float64)
  pad = [(0, 0)] * (x.ndim - 2) + [(r, r), (r, r)]
  x = np.pad(x, pad, mode="reflect")
  h, w = maps.shape[-2:]
  x = sum(k[i] * x[..., i : i + h, :] for i in range(size))
  x = sum(k[i] * x[..., :, i : i + w] for i in range(size))
  return x.astype(np.float32)


def region_boxes(maps: np.ndarray, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
  """The bounding box of each map's region {map >= threshold}, per frame
  (MLAR section 7's boxes).

  Args:
    maps: [..., H, W] normalised maps.
    threshold: the region's lower bound.

  Returns:
    boxes: float32 [..., 4], [y1, x1, y2, x2] in [0, 1] (pixel edges, as the
      dataset's boxes); zeros where the region is empty.
    valid: bool [...], the region is not empty.
  """
  return transforms.region_boxes(maps >= threshold)


def multi_label_cam(
  maps: np.ndarray,
  *,
  separate: bool = True,
  distance_threshold: float = 1e-4,
  active_threshold: float = 0.5,
  smoothing: int = 5,
) -> tuple[np.ndarray, np.ndarray]:
  """M-MiT 5.1's multi-label CAM of one clip (module docstring).

  Args:
    maps: [N, T, H, W] CAMs of the N predicted classes at frame resolution.
    separate: region separation (False: the plain maximum of the maps).
    distance_threshold, active_threshold: of `separate_regions`.
    smoothing: Gaussian kernel size (0 or 1: none).

  Returns:
    combined: [T, H, W] float32, the smoothed maximum over classes.
    owner: [T, H, W] int32, the class (index into `maps`) of each pixel's
      maximum, for placing each class's label at its region.
  """
  m = normalize(maps)
  if separate:
    m = separate_regions(m, distance_threshold, active_threshold)
  combined = m.max(axis=0)
  if smoothing > 1:
    combined = smooth(combined, smoothing)
  return combined, m.argmax(axis=0).astype(np.int32)
