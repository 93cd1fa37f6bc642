"""``phalanx list rules|attacks|protocols|topologies|presets``: what a run can name, one line each.

Every list comes from the registry the run itself reads: rules and attacks from :mod:`phalanx.aggregation`
(through :mod:`phalanx.gossip.aggregator` and :mod:`phalanx.gossip.byzantine`), protocols from
:mod:`phalanx.gossip.registry`, topologies from :mod:`phalanx.sim.topology` (plug-ins included) and presets
from the shipped TOML files.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from typing import Any

KINDS = ("rules", "attacks", "protocols", "topologies", "presets")

# what the simulator's own behaviours (not functions of phalanx.aggregation) do
_BEHAVIOURS = {
    "dissensus": "push each target away from its neighbours (He, Karimireddy & Jaggi, 2022)",
    "equivocation": "send each neighbour the honest vector plus its own Gaussian noise (scale)",
    "silent": "send nothing",
    "label-flip": "train on flipped labels, otherwise behave",
}
_MEAN = "D-PSGD mixing: the weighted mean of own and received models (the default; takes no parameter)"


def _summary(obj: Any, width: int = 100) -> str:
    """The first sentence of ``obj``'s docstring (its first paragraph, cut at ``width`` characters)."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    para = " ".join(doc.split("\n\n", 1)[0].split())
    if ". " in para:
        para = para[: para.index(". ") + 1]
    return para if len(para) <= width else para[: width - 3].rstrip() + "..."


def _params(names: Iterable[str]) -> str:
    shown = sorted(set(names) - {"weights", "own", "byzantine_weight"})
    return f" [{', '.join(shown)}]" if shown else ""


def rules() -> list[tuple[str, str]]:
    import phalanx.aggregation as agg
    from phalanx.gossip.aggregator import gossip_rule_names, rule_names

    gossip = gossip_rule_names()
    out = []
    for name in rule_names():
        if name == "mean":
            out.append((name, _MEAN))
            continue
        text = _summary(agg.RULES.get(name)) or name
        takes_weights = "weights" in agg.RULE_PARAMS.get(name, ())
        tag = ""
        if name in gossip:
            tag = (
                " (gossip rule: own model + mixing weights)" if takes_weights else " (gossip rule: own model)"
            )
        out.append((name, text + tag + _params(agg.RULE_PARAMS.get(name, ()))))
    return out


def attacks() -> list[tuple[str, str]]:
    import phalanx.aggregation as agg
    from phalanx.gossip.byzantine import attack_names

    out = []
    for name in attack_names():
        if name in _BEHAVIOURS and name not in agg.ATTACKS:
            out.append((name, _BEHAVIOURS[name]))
        else:
            out.append((name, _summary(agg.ATTACKS.get(name)) + _params(agg.ATTACK_PARAMS.get(name, ()))))
    return out


def protocols() -> list[tuple[str, str]]:
    from phalanx.gossip import registry

    return [(name, registry.get(name).summary) for name in registry.names()]


def topologies() -> list[tuple[str, str]]:
    from phalanx.sim.topology import topologies as table

    return [(spec.usage, spec.summary) for spec in table().values()]


def presets() -> list[tuple[str, str]]:
    from phalanx.sim.config import preset_description, preset_names

    return [(name, preset_description(name)) for name in preset_names()]


LISTS: dict[str, Callable[[], list[tuple[str, str]]]] = {
    "rules": rules,
    "attacks": attacks,
    "protocols": protocols,
    "topologies": topologies,
    "presets": presets,
}


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "list", help="list the rules, attacks, protocols, topologies or presets a run can name, one a line"
    )
    parser.add_argument("kind", choices=KINDS, help="what to list")
    parser.set_defaults(func=run_list)


def run_list(args: argparse.Namespace) -> int:
    entries = LISTS[args.kind]()
    width = max((len(name) for name, _ in entries), default=0)
    for name, text in entries:
        print(f"{name:{width}s}  {text}".rstrip())
    return 0
