"""phalanx: a peer-to-peer decentralized learning node.

The Python API (docs/api.md) is :func:`simulate`, :func:`run_node` and their results; it is imported on first
use, so that ``import phalanx`` (and ``phalanx --help``) stays free of torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from phalanx.api import NodeResult, SimulationResult, run_node, simulate

__all__ = ["NodeResult", "SimulationResult", "run_node", "simulate"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from phalanx import api

        return getattr(api, name)
    raise AttributeError(f"module 'phalanx' has no attribute {name!r}")
