"""The protocols phalanx can run: one registry that the simulator, the node and the CLI all read.

Adding a protocol is one module that defines a :class:`~phalanx.gossip.spec.ProtocolSpec` and one line
in :data:`BUILTIN` below. Out-of-tree protocols register through the entry point group
``phalanx.protocols`` (each entry point names a ``ProtocolSpec``), e.g. in the plug-in's pyproject::

    [project.entry-points."phalanx.protocols"]
    my-protocol = "my_package.protocol:SPEC"
"""

from __future__ import annotations

from functools import cache

from phalanx.gossip.bristle import SPEC as BRISTLE_SPEC
from phalanx.gossip.dpsgd import SPEC as DPSGD_SPEC
from phalanx.gossip.epidemic import SPEC_LOCAL, SPEC_ORACLE
from phalanx.gossip.modest import SPEC as MODEST_SPEC
from phalanx.gossip.spec import ProtocolSpec, SettingsError

BUILTIN: tuple[ProtocolSpec, ...] = (DPSGD_SPEC, MODEST_SPEC, SPEC_LOCAL, SPEC_ORACLE, BRISTLE_SPEC)

ENTRY_POINT_GROUP = "phalanx.protocols"


@cache
def protocols() -> dict[str, ProtocolSpec]:
    """Every registered protocol by name: the built-in ones, then those of installed plug-ins."""
    found = {spec.name: spec for spec in BUILTIN}
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        spec = ep.load()
        if not isinstance(spec, ProtocolSpec):
            raise SettingsError(f"entry point {ep.name} ({ep.value}) is not a ProtocolSpec")
        found.setdefault(spec.name, spec)
    return found


def register(spec: ProtocolSpec) -> None:
    """Add ``spec`` for this process (what an entry point does for an installed plug-in)."""
    table = protocols()
    if spec.name in table and table[spec.name] is not spec:
        raise SettingsError(f"a protocol named {spec.name!r} is registered already")
    table[spec.name] = spec


def names() -> tuple[str, ...]:
    return tuple(sorted(protocols()))


def get(name: str) -> ProtocolSpec:
    """The spec of ``name``, or :class:`SettingsError` listing the choices."""
    table = protocols()
    spec = table.get(name)
    if spec is None:
        raise SettingsError(f"unknown protocol {name!r}; choose one of: {', '.join(sorted(table))}")
    return spec


def help_text() -> str:
    """``name: summary`` for every protocol, for ``--protocol``'s help."""
    return "; ".join(f"{s.name}: {s.summary}" for s in sorted(protocols().values(), key=lambda s: s.name))
