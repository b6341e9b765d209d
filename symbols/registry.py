"""One entry point for every network: ``get_symbol("m1" | "r50" | ...)``.

A family registers its builder under a name with :func:`register`, together with the letter that starts its
network names and the numbers it accepts after that letter ("m1" -> family "mobilenet", variant 1;
"r50" -> family "resnet", variant 50). Builders are called as
``builder(variant, num_classes=..., multiplier=..., version_input=..., version_output=..., version_unit=...,
version_se=..., version_act=..., version_body=...)`` and return the ``fc1`` output symbol.
"""
import math
import re
from collections import namedtuple

from agegender import config

_Family = namedtuple("Family", "name prefix variants builder")

_FAMILIES = {}
_NETWORK_NAME = re.compile(r"^([a-z]+)(\d+)$")


def register(name, prefix, variants):
    """Decorator registering a family builder under ``name`` for networks ``<prefix><variant>``."""
    def decorate(builder):
        if name in _FAMILIES:
            raise ValueError(f"network family '{name}' is already registered")
        if any(family.prefix == prefix for family in _FAMILIES.values()):
            raise ValueError(f"network prefix '{prefix}' is already used by another family")
        _FAMILIES[name] = _Family(name, prefix, tuple(variants), builder)
        return builder
    return decorate


def list_families():
    """Names of the registered families, e.g. ``["mobilenet", "resnet"]``."""
    return sorted(_FAMILIES)


def list_networks():
    """Every accepted network name, e.g. ``["m1", "r18", "r34", ...]``."""
    return [f"{family.prefix}{variant}" for name in sorted(_FAMILIES)
            for family in [_FAMILIES[name]] for variant in family.variants]


def parse_network(network):
    """Split a network name into ``(family_name, variant)``; unknown names raise ValueError."""
    match = _NETWORK_NAME.match(str(network).strip().lower())
    family = None
    if match:
        family = next((f for f in _FAMILIES.values() if f.prefix == match.group(1)), None)
    if family is None:
        prefixes = ", ".join(f"'{f.prefix}<n>' ({f.name})" for f in _FAMILIES.values())
        raise ValueError(f"unknown network '{network}'; expected one of {prefixes}")
    variant = int(match.group(2))
    if variant not in family.variants:
        raise ValueError(f"unknown network '{network}': {family.name} accepts "
                         f"{', '.join(family.prefix + str(v) for v in family.variants)}")
    return family.name, variant


def get_symbol(network="m1", num_classes=config.FC1_SIZE, multiplier=1.0, version_input=1, version_output="GAP",
               version_unit=3, version_se=0, version_act="prelu", version_body="original"):
    """Build network ``network`` (e.g. ``"m1"``, ``"r50"``) up to its ``fc1`` output, without any loss.

    The input is the variable ``data``: N x 3 x 112 x 112 RGB pixels 0..255 (scaled inside the graph).

    * ``num_classes``: outputs of ``fc1`` (202 = 2 gender logits + 100 age pairs).
    * ``multiplier``: MobileNet width (``int(32 * multiplier)`` base filters); ignored by ResNets.
    * ``version_input``: 0 = stride-2 first convolution (224-style input), 1 = stride 1 (default);
      ResNets also take 2 (BatchNorm on the raw data instead of the fixed scaling).
    * ``version_output``: head type, see :data:`symbols.heads.HEADS` (``"GAP"``, ``"E"``, ``"GDC"``, ...).
    * ``version_unit`` (1, 2, 3 or ``"3x"``), ``version_se`` (0/1): ResNet residual unit and
      squeeze-excitation; ignored by MobileNet.
    * ``version_act``: activation of the head (and of ResNet units).
    * ``version_body``: MobileNet's block layout, ``"original"`` (ReLU, fixed-gamma BatchNorm) or
      ``"retinaface"`` (LeakyReLU 0.1, learned gamma: the RetinaFace backbone's, see
      :mod:`symbols.pretrained`); ignored by ResNets.

    Unknown network names or options raise ValueError.
    """
    family_name, variant = parse_network(network)
    return _FAMILIES[family_name].builder(
        variant, num_classes=num_classes, multiplier=multiplier, version_input=version_input,
        version_output=version_output, version_unit=version_unit, version_se=version_se, version_act=version_act,
        version_body=version_body)


def count_params(sym, data_shape, include_aux=False):
    """Number of float values in the parameters of ``sym`` for input ``data`` of shape ``data_shape``.

    Counts the argument arrays (weights, biases, BatchNorm gamma/beta, PReLU slopes), leaving out ``data``
    and ``*_label`` inputs; ``include_aux=True`` adds the BatchNorm moving mean/variance.
    """
    arg_shapes, _, aux_shapes = sym.infer_shape_partial(data=tuple(data_shape))
    shapes = [(name, shape) for name, shape in zip(sym.list_arguments(), arg_shapes)
              if name != "data" and not name.endswith("_label")]
    if include_aux:
        shapes += list(zip(sym.list_auxiliary_states(), aux_shapes))
    total = 0
    for name, shape in shapes:
        if not shape or 0 in shape:
            raise ValueError(f"cannot infer the shape of parameter '{name}' from data shape {tuple(data_shape)}")
        total += math.prod(shape)
    return total
