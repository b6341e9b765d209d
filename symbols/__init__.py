"""Network definitions registered by name behind one :func:`get_symbol`.

>>> import symbols
>>> fc1 = symbols.get_symbol("m1", multiplier=0.25)   # the shipped model's architecture
>>> symbols.list_networks()[:3]
['m1', 'r18', 'r34']
"""
from . import fmobilenet, fresnet  # noqa: F401  (importing a family registers it)
from .fmobilenet import BODIES as MOBILENET_BODIES
from .fmobilenet import block_names as mobilenet_block_names
from .heads import HEADS
from .registry import count_params, get_symbol, list_families, list_networks, parse_network, register

__all__ = ["HEADS", "MOBILENET_BODIES", "mobilenet_block_names", "count_params", "get_symbol", "list_families", "list_networks", "parse_network", "register"]
