"""The import directions of docs/design.md, checked on every source file (module-level and lazy imports).

``phalanx`` (the face: CLI commands) -> ``sim``, ``node`` -> ``gossip`` -> ``aggregation``. Each package's
``.py`` files are parsed with :mod:`ast`; every ``import``/``from ... import`` anywhere in the file (inside
functions and ``if TYPE_CHECKING:`` blocks too) and every ``importlib.import_module("...")`` with a literal
name is resolved to an absolute module name and checked against the rules below. The project also stands
alone: code and docs point at ``docs/design.md``, never at files outside the repository.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# folder in the repository -> the package it installs as (pyproject.toml's package-dir)
PACKAGES = {
    "phalanx": "phalanx",
    "sim": "phalanx.sim",
    "node": "phalanx.node",
    "gossip": "phalanx.gossip",
    "aggregation": "phalanx.aggregation",
}
FACE = "phalanx"  # the CLI: phalanx.cli, phalanx.options, phalanx.*_cmd, phalanx.__init__
LOWER = ("phalanx.sim", "phalanx.node", "phalanx.gossip", "phalanx.aggregation")
NODE_IO = tuple(
    f"phalanx.node.{m}"
    for m in ("runtime", "transport", "app", "netup", "metrics", "identity", "checkpoint", "bans")
)

# package -> module prefixes it must never import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    # sans-I/O protocols: no event loop, no network, no graphs, nothing above them
    "phalanx.gossip": ("trio", "libp2p", "networkx", "phalanx.sim", "phalanx.node", FACE),
    # the rules and attacks: nothing of phalanx but themselves, and no I/O
    "phalanx.aggregation": (
        "trio",
        "libp2p",
        "phalanx.gossip",
        "phalanx.sim",
        "phalanx.node",
        FACE,
    ),
    # the simulator runs the protocols in virtual time: no real event loop or network, none of the node's
    # I/O modules (it may use node's torch-only ones: datasets, partition, models, learner, config), no CLI
    "phalanx.sim": ("trio", "libp2p", *NODE_IO, FACE),
    # the real node never imports the simulator (net up's topology arrives as an edge list from the face)
    # nor the CLI
    "phalanx.node": ("phalanx.sim", FACE),
}

# (package, imported module) pairs allowed despite FORBIDDEN, each with the reason. None today: node/netup.py
# takes the graph as an edge list (phalanx/net_cmd.py builds it with the simulator), so node needs no sim.
ALLOWED: dict[tuple[str, str], str] = {}


def _inside(module: str, prefix: str) -> bool:
    """``module`` is ``prefix`` or one of its submodules. The face ``phalanx`` is special: it means the
    top-level package and its own modules, not the packages installed below it."""
    if prefix == FACE:
        if module == FACE:
            return True
        if not module.startswith(FACE + "."):
            return False
        return not any(module == p or module.startswith(p + ".") for p in LOWER)
    return module == prefix or module.startswith(prefix + ".")


def imports_of(source: str, module: str, *, is_package: bool = False) -> list[tuple[int, str]]:
    """``(line, absolute module)`` for every import in ``source`` (the text of module ``module``), at any
    depth: lazy imports inside functions count. ``from . import x`` resolves against ``module``'s package;
    ``from pkg import name`` yields both ``pkg`` and ``pkg.name`` (the name may be a submodule)."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            found.extend((node.lineno, f"{target}.{alias.name}") for alias in node.names if alias.name != "*")
        elif (
            isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def violations(package: str, source: str, module: str, *, is_package: bool = False) -> list[str]:
    """Every import of ``source`` (module ``module`` of ``package``) that breaks :data:`FORBIDDEN`."""
    out = []
    for line, target in imports_of(source, module, is_package=is_package):
        for prefix in FORBIDDEN.get(package, ()):
            if _inside(target, prefix) and (package, target) not in ALLOWED:
                out.append(f"{module}:{line} imports {target} ({package} must not import {prefix})")
    return out


def _modules() -> list[tuple[str, Path, str, bool]]:
    out = []
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out.append((package, path, ".".join([package, *parts]), path.name == "__init__.py"))
    return out


def test_every_package_keeps_its_import_direction() -> None:
    modules = _modules()
    assert len(modules) > 50  # every package was found and parsed
    problems = [
        problem
        for package, path, module, is_package in modules
        for problem in violations(package, path.read_text(), module, is_package=is_package)
    ]
    assert problems == []


@pytest.mark.parametrize(
    ("package", "source", "bad"),
    [
        ("phalanx.gossip", "import trio\n", "trio"),
        ("phalanx.gossip", "def f():\n    import networkx as nx\n", "networkx"),
        ("phalanx.gossip", "from phalanx.sim.topology import build_graph\n", "phalanx.sim.topology"),
        ("phalanx.gossip", "from phalanx import cli\n", "phalanx.cli"),
        (
            "phalanx.gossip",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import libp2p\n",
            "libp2p",
        ),
        (
            "phalanx.gossip",
            "import importlib\nimportlib.import_module('phalanx.node.app')\n",
            "phalanx.node.app",
        ),
        ("phalanx.aggregation", "from phalanx.gossip.events import PeerId\n", "phalanx.gossip.events"),
        ("phalanx.aggregation", "from .. import options\n", "phalanx.options"),
        (
            "phalanx.sim",
            "class A:\n    def f(self):\n        from phalanx.node import runtime\n",
            "phalanx.node.runtime",
        ),
        ("phalanx.sim", "from phalanx.node.transport import Transport\n", "phalanx.node.transport"),
        ("phalanx.node", "def f():\n    from ..sim import experiment\n", "phalanx.sim"),
        ("phalanx.node", "from phalanx.sim_cmd import FLAGS\n", "phalanx.sim_cmd"),
    ],
)
def test_the_check_catches_a_violation(package: str, source: str, bad: str) -> None:
    module = package + ".example"
    problems = violations(package, source, module)
    assert problems and any(f"imports {bad} " in p for p in problems), problems


@pytest.mark.parametrize(
    ("package", "source"),
    [
        (
            "phalanx.gossip",
            "import torch\nfrom phalanx.aggregation import registry\nfrom .events import PeerId\n",
        ),
        ("phalanx.aggregation", "from . import fused\nfrom .validation import check_own\n"),
        ("phalanx.sim", "from phalanx.node.learner import Trainer\nfrom phalanx.gossip import registry\n"),
        ("phalanx.node", "import trio\nfrom phalanx.gossip.fields import coerce\n"),
        ("phalanx", "from phalanx.sim import topology\nfrom phalanx.node import netup\n"),
    ],
)
def test_allowed_imports_pass(package: str, source: str) -> None:
    assert violations(package, source, package + ".example") == []


def test_relative_imports_resolve_against_the_package() -> None:
    src = "from . import fused\nfrom ..gossip.events import PeerId\n"
    got = [m for _, m in imports_of(src, "phalanx.aggregation.robust")]
    assert "phalanx.aggregation.fused" in got and "phalanx.gossip.events" in got
    got = [m for _, m in imports_of("from . import registry\n", "phalanx.gossip", is_package=True)]
    assert "phalanx.gossip.registry" in got


# -- the project stands alone ------------------------------------------------------------------------------

OUTSIDE = ("../shared", "CONVENTIONS.md", "DESIGN.md")


def _shipped_text_files() -> list[Path]:
    files = [ROOT / name for name in ("README.md", "Makefile", "pyproject.toml")]
    for folder in (*PACKAGES, "scripts", "docs"):
        files += [p for p in sorted((ROOT / folder).rglob("*")) if p.suffix in (".py", ".md", ".toml", ".c")]
    return [f for f in files if f.is_file()]


def test_code_and_docs_refer_to_nothing_outside_the_repository() -> None:
    files = _shipped_text_files()
    assert ROOT / "docs" / "design.md" in files and ROOT / "node" / "runtime.py" in files
    found = [
        f"{path.relative_to(ROOT)}:{number}: {needle}"
        for path in files
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        for needle in OUTSIDE
        if needle in line
    ]
    assert found == []
