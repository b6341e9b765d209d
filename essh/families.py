"""Checkpoint families of the ESSH detector: input normalisation, anchor decoding, NMS defaults.

Each checkpoint belongs to a family, named in its ``<prefix>-detector.json`` sidecar or, without one,
told by its output names:

* ``essh`` — the original enhanced-ssh-mxnet models (outputs ``rpn_*``): RGB minus the VGG means,
  SSH anchor decoding, top 1000 per stride, NMS 0.3, landmarks clipped to the image.
* ``retinaface`` — insightface RetinaFace ``net3`` checkpoints (outputs ``face_rpn_*``): raw 0-255 RGB,
  SSH anchor decoding, NMS 0.4.
* ``retinaface-pytorch`` — Pytorch_Retinaface weights converted by :mod:`essh.convert` (the default):
  BGR minus (104, 117, 123), prior-box decoding with variances 0.1 / 0.2, NMS 0.4.
"""
import json
import os
from dataclasses import dataclass

from agegender import config
from agegender.checkpoint import checkpoint_paths
from agegender.errors import CheckpointError

from .layout import ESSH_OUTPUT_PREFIX, RETINAFACE_OUTPUT_PREFIX

ESSH = "essh"
RETINAFACE = "retinaface"
PYTORCH_RETINAFACE = "retinaface-pytorch"

# Older insightface checkpoints name BatchNorm statistics the way MXNet did before 1.0.
AUX_RENAMES = {"_running_mean": "_moving_mean", "_running_var": "_moving_var"}


@dataclass(frozen=True)
class Family:
    """How a checkpoint family wants its input and how its outputs decode.

    ``means`` are subtracted from the tensor channels, given in ``channel_order``. ``decoding`` is
    ``"ssh"`` (SSH anchors, deltas scaled by the anchor size, +1 pixel convention) or
    ``"prior"`` (Pytorch_Retinaface prior boxes ``anchor_sizes`` centred on each cell, deltas scaled by
    ``variances``). ``pre_nms_top`` caps the candidates per stride (None: no cap).
    """

    name: str
    channel_order: str
    means: tuple
    decoding: str
    nms: float
    pre_nms_top: int = None
    clip_landmarks: bool = False
    anchor_sizes: tuple = ()
    variances: tuple = ()


FAMILIES = {
    ESSH: Family(ESSH, "RGB", (123.68, 116.779, 103.939), "ssh", nms=config.ESSH_NMS, pre_nms_top=1000, clip_landmarks=True),
    RETINAFACE: Family(RETINAFACE, "RGB", (0.0, 0.0, 0.0), "ssh", nms=0.4),
    PYTORCH_RETINAFACE: Family(PYTORCH_RETINAFACE, "BGR", (104.0, 117.0, 123.0), "prior", nms=0.4,
                               anchor_sizes=((32, (256, 512)), (16, (64, 128)), (8, (16, 32))),
                               variances=(0.1, 0.2)),
}


def family_path(prefix):
    """Path of the sidecar JSON naming a checkpoint's family."""
    return f"{prefix}-detector.json"


def detect_family(prefix, sym):
    """Family name of a checkpoint: from its sidecar JSON, else from the deploy graph's output names."""
    sidecar = family_path(prefix)
    if os.path.isfile(sidecar):
        try:
            with open(sidecar, "r", encoding="utf-8") as f:
                name = json.load(f)["family"]
        except (ValueError, KeyError, TypeError):
            raise CheckpointError(f"{sidecar}: expected JSON with a 'family' entry") from None
        if name not in FAMILIES:
            raise CheckpointError(f"{sidecar}: unknown family '{name}' (known: {', '.join(FAMILIES)})")
        return name
    outputs = sym.list_outputs()
    if all(o.startswith(RETINAFACE_OUTPUT_PREFIX + "_") for o in outputs):
        return RETINAFACE
    if all(o.startswith(ESSH_OUTPUT_PREFIX + "_") for o in outputs):
        return ESSH
    raise CheckpointError(f"{checkpoint_paths(prefix, 0)[0]}: cannot tell the detector family from outputs "
                          f"{outputs[:3]}...; write {sidecar} with {{\"family\": ...}}")
