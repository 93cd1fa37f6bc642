"""MoDeST (de Vos et al.): decentralized sampling of trainers and aggregators, and a Byzantine-robust variant.

- :mod:`~phalanx.gossip.modest.config`: :class:`ModestConfig` and the user-facing :class:`ModestParams`;
- :mod:`~phalanx.gossip.modest.search`: the availability search, a small state machine of its own;
- :mod:`~phalanx.gossip.modest.timers`: typed timer names;
- :mod:`~phalanx.gossip.modest.node`: :class:`Modest`, one node (dispatch, aggregator and trainer roles);
- :mod:`~phalanx.gossip.modest.spec`: the registry entry (:data:`SPEC`).

The Byzantine form (:class:`~phalanx.gossip.byzantine.ByzantineModest`) lives with the other attackers.
"""

from phalanx.gossip.modest.config import ModestConfig, ModestParams
from phalanx.gossip.modest.node import Modest
from phalanx.gossip.modest.spec import SPEC

__all__ = ["SPEC", "Modest", "ModestConfig", "ModestParams"]
