"""Communication graphs for the simulator: a registry of small topology specs, built with networkx.

Nodes are the integers ``0 .. n-1``. A topology is written ``NAME`` or ``NAME:PARAMETERS``:

==========================  =======================================================================
``ring``                    cycle
``torus`` / ``grid``        2-D torus (wrap-around) / 2-D grid; n must be rows x cols, as square as can be
``complete``                every pair
``star``                    node 0 is the hub
``erdos-renyi:P``           each edge with probability P, re-drawn (new seed) until connected
``regular:K``               random K-regular (n*K even)
``watts-strogatz:K:P``      ring lattice of degree K, each edge rewired with probability P (connected)
``barabasi-albert:M``       preferential attachment, M edges per new node
``exponential``             node i links to i +- 2^j (mod n) (Ying et al., 2021)
``dumbbell:B``              two cliques joined by B edges (default 1)
``malicious-ring:H:B``      H nodes in a ring, each with B extra neighbours (nodes H.., meant to be Byzantine)
``file:PATH``               a user's graph: ``.graphml``, ``.json`` (node-link) or an edge list
``dynamic-regular:K``       a fresh random K-regular graph every round (see :class:`TimeVarying`)
==========================  =======================================================================

Each row is one :class:`TopologySpec` in :data:`BUILTIN`: its name, how its parameter part is written and
parsed, how it builds the graph on n nodes from a seed and, for a time-varying topology, how it builds
round r's graph. :func:`parse` turns a string into a :class:`Topology` (a spec and its parsed parameters);
``build_graph``, ``is_time_varying``, the CLI's help and every error read the registry. Adding a topology is
one spec here and its line in :data:`BUILTIN`; out-of-tree topologies register through the entry point
group ``phalanx.topologies`` (each entry point names a ``TopologySpec``)::

    [project.entry-points."phalanx.topologies"]
    hypercube = "my_package.graphs:HYPERCUBE"

Edges may carry ``latency`` (seconds) and ``bandwidth`` (bytes per second); the virtual network uses them.
Every error is a :class:`TopologyError` (a ``ValueError``) with one line that names the topology and, for a
badly written one, the expected form.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np


class TopologyError(ValueError):
    """A topology spec or graph that cannot be used."""


def _no_params(text: str) -> tuple[()]:
    if text:
        raise TopologyError("takes no parameters")
    return ()


@dataclass(frozen=True, slots=True, kw_only=True)
class TopologySpec:
    """One kind of topology.

    ``parse`` turns the text after ``NAME:`` ("" when there is none) into the parameters (any value);
    ``build(params, n, seed)`` returns a graph on nodes ``0 .. n-1``; ``rounds(params, n, seed)``, for a
    time-varying topology only, returns round r's graph as a function of r (``build`` gives the graph the
    run is planned on). Both raise :class:`TopologyError` with the problem alone: the caller adds the
    topology's text and ``form``.
    """

    name: str
    summary: str
    build: Callable[[Any, int, int], nx.Graph]
    form: str = ""  # how the parameter part is written ("K:P"); "" when it takes none
    example: str = ""  # a valid spec, shown by errors (default: the name)
    parse: Callable[[str], Any] = _no_params
    rounds: Callable[[Any, int, int], Callable[[int], nx.Graph]] | None = None
    min_nodes: int = 2

    @property
    def usage(self) -> str:
        """How the topology is written: ``regular:K``."""
        return f"{self.name}:{self.form}" if self.form else self.name

    @property
    def time_varying(self) -> bool:
        return self.rounds is not None


@dataclass(frozen=True, slots=True)
class Topology:
    """A parsed topology string: its spec and its parameters."""

    text: str
    spec: TopologySpec
    params: Any

    @property
    def time_varying(self) -> bool:
        return self.spec.time_varying

    def build(self, n: int, seed: int) -> nx.Graph:
        """The graph on n nodes (checked connected), or :class:`TopologyError`."""
        if n < self.spec.min_nodes:
            raise TopologyError(f"topology {self.text!r} needs at least {self.spec.min_nodes} nodes, got {n}")
        try:
            graph = self.spec.build(self.params, n, seed)
        except TopologyError as exc:
            raise TopologyError(f"topology {self.text!r} on {n} nodes: {exc}") from None
        if not nx.is_connected(graph):
            raise TopologyError(f"topology {self.text!r} on {n} nodes is not connected")
        return graph

    def graph_of_round(self, n: int, seed: int) -> Callable[[int], nx.Graph] | None:
        """Round r's graph as a function of r for a time-varying topology; None for a static one."""
        if self.spec.rounds is None:
            return None
        return self.spec.rounds(self.params, n, seed)


# -- parameter parsing ---------------------------------------------------------------------------------


def _number(text: str, name: str, kind: type, lo: float, hi: float = math.inf) -> Any:
    try:
        value = kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise TopologyError(f"{name} must be {what}, got {text!r}") from None
    if not lo <= value <= hi:
        bounds = f">= {lo:g}" if hi == math.inf else f"in [{lo:g}, {hi:g}]"
        raise TopologyError(f"{name} must be {bounds}, got {value}")
    return value


def _fields(text: str, count: int, names: str) -> list[str]:
    parts = text.split(":") if text else []
    if len(parts) != count or not all(parts):
        raise TopologyError(f"needs {names}")
    return parts


def _one_int(name: str, meaning: str, lo: int) -> Callable[[str], int]:
    """A parser of one whole number ``name`` >= lo (``meaning`` says what it is when it is missing)."""

    def parse(text: str) -> int:
        (value,) = _fields(text, 1, f"{meaning} {name}")
        return int(_number(value, name, int, lo))

    return parse


def _in_range(value: int, name: str, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise TopologyError(f"{name} must be in {lo}..{hi}, got {value}")


# -- the graphs ----------------------------------------------------------------------------------------


def _factor(n: int) -> tuple[int, int]:
    rows = math.isqrt(n)
    while n % rows:
        rows -= 1
    return rows, n // rows


def _label_key(label: object) -> tuple[int, int, str]:
    """Integer labels (``3`` or ``"3"``) in numeric order, then any other label in string order: node
    ``"10"`` of an edge list must become node 10, not node 2."""
    text = str(label).strip()
    if text.lstrip("-").isdigit():
        return (0, int(text), "")
    return (1, 0, text)


def _relabel(graph: nx.Graph) -> nx.Graph:
    """Nodes renamed 0..n-1 in sorted order (numeric for integer-like names), added in that order."""
    nodes = list(graph.nodes)
    order = sorted(nodes, key=_label_key) if all(isinstance(v, str) for v in nodes) else sorted(nodes)
    index = {label: i for i, label in enumerate(order)}
    out = nx.Graph()
    out.add_nodes_from((index[v], graph.nodes[v]) for v in order)
    out.add_edges_from((index[u], index[v], data) for u, v, data in graph.edges(data=True))
    return out


def load_graph_file(path: Path) -> nx.Graph:
    """A graph from GraphML, node-link JSON or an edge list (``u v [latency=.. bandwidth=..]`` per line)."""
    if not path.exists():
        raise TopologyError(f"graph file {path} does not exist")
    try:
        if path.suffix.lower() == ".graphml":
            graph = nx.Graph(nx.read_graphml(path))
        elif path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
            graph = nx.Graph(nx.node_link_graph(data, edges="links" if "links" in data else "edges"))
        else:
            graph = nx.Graph()
            for lineno, line in enumerate(path.read_text().splitlines(), 1):
                parts = line.split("#", 1)[0].split()
                if not parts:
                    continue
                if len(parts) < 2:
                    raise TopologyError(f"{path}:{lineno}: an edge needs two node names")
                attrs: dict[str, float] = {}
                for extra in parts[2:]:
                    key, _, value = extra.partition("=")
                    if key not in ("latency", "bandwidth", "weight"):
                        raise TopologyError(f"{path}:{lineno}: unknown edge attribute {key!r}")
                    attrs[key] = float(value)
                graph.add_edge(parts[0], parts[1], **attrs)
    except TopologyError:
        raise
    except (OSError, ValueError, KeyError, TypeError, nx.NetworkXError) as exc:
        raise TopologyError(f"cannot read graph file {path}: {exc}".splitlines()[0]) from None
    graph.remove_edges_from(list(nx.selfloop_edges(graph)))
    if graph.number_of_nodes() == 0:
        raise TopologyError(f"graph file {path} has no nodes")
    for _, _, data in graph.edges(data=True):
        for key in ("latency", "bandwidth"):
            if key in data and not float(data[key]) >= 0:
                raise TopologyError(f"graph file {path}: edge {key} must be >= 0")
    return _relabel(graph)


def random_regular(n: int, k: int, *, seed: int) -> nx.Graph:
    """A connected random k-regular graph (re-drawn with the next seed until connected)."""
    if (n * k) % 2:
        raise TopologyError(f"a {k}-regular graph on {n} nodes needs n*k even")
    for attempt in range(1000):
        graph = nx.random_regular_graph(k, n, seed=seed + attempt)
        if nx.is_connected(graph):
            return graph
    raise TopologyError(f"no connected {k}-regular graph on {n} nodes found")  # pragma: no cover


@dataclass(frozen=True, slots=True)
class TimeVarying:
    """A fresh random k-regular graph per round, a pure function of (seed, round): every node computes
    the same graph, so in a real network it needs nothing but the shared seed."""

    n: int
    k: int
    seed: int

    def graph(self, round: int) -> nx.Graph:
        rng = np.random.default_rng([self.seed, round])
        return random_regular(self.n, self.k, seed=int(rng.integers(2**31)))


def _torus_or_grid(periodic: bool) -> Callable[[Any, int, int], nx.Graph]:
    def build(_: Any, n: int, seed: int) -> nx.Graph:
        rows, cols = _factor(n)
        return _relabel(nx.grid_2d_graph(rows, cols, periodic=periodic and min(rows, cols) > 2))

    return build


def _erdos_renyi(p: float, n: int, seed: int) -> nx.Graph:
    for attempt in range(1000):
        graph = nx.gnp_random_graph(n, p, seed=seed + attempt)
        if nx.is_connected(graph):
            return graph
    raise TopologyError("stayed disconnected after 1000 draws; raise P")


def _parse_probability(text: str) -> float:
    (value,) = _fields(text, 1, "an edge probability P")
    p = float(_number(value, "P", float, 0.0, 1.0))
    if p <= 0:
        raise TopologyError(f"P must be > 0, got {p}")
    return p


def _regular(k: int, n: int, seed: int) -> nx.Graph:
    _in_range(k, "K", 1, n - 1)
    return random_regular(n, k, seed=seed)


def _parse_watts_strogatz(text: str) -> tuple[int, float]:
    k, p = _fields(text, 2, "K and P")
    return int(_number(k, "K", int, 2)), float(_number(p, "P", float, 0.0, 1.0))


def _watts_strogatz(params: tuple[int, float], n: int, seed: int) -> nx.Graph:
    k, p = params
    _in_range(k, "K", 2, n - 1)
    return nx.connected_watts_strogatz_graph(n, k, p, tries=1000, seed=seed)


def _barabasi_albert(m: int, n: int, seed: int) -> nx.Graph:
    _in_range(m, "M", 1, n - 1)
    return nx.barabasi_albert_graph(n, m, seed=seed)


def _exponential(_: Any, n: int, seed: int) -> nx.Graph:
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    hop = 1
    while hop < n:
        graph.add_edges_from((i, (i + hop) % n) for i in range(n))
        hop *= 2
    graph.remove_edges_from(list(nx.selfloop_edges(graph)))
    return graph


def _parse_dumbbell(text: str) -> int:
    return _one_int("B", "a number of bridges", 1)(text) if text else 1


def _dumbbell(bridges: int, n: int, seed: int) -> nx.Graph:
    _in_range(bridges, "B", 1, n)
    half = n // 2
    graph = nx.complete_graph(half)
    graph.add_edges_from(nx.complete_graph(range(half, n)).edges)
    for b in range(min(bridges, half, n - half)):
        graph.add_edge(b, half + b)
    return graph


def _parse_malicious_ring(text: str) -> tuple[int, int]:
    h, b = _fields(text, 2, "H and B")
    return int(_number(h, "H", int, 3)), int(_number(b, "B", int, 0))


def _malicious_ring(params: tuple[int, int], n: int, seed: int) -> nx.Graph:
    # He, Karimireddy & Jaggi (2022): H honest nodes on a ring, each with B Byzantine neighbours of its own.
    h, b = params
    if n != h * (b + 1):
        raise TopologyError(f"it has {h * (b + 1)} nodes, the run has {n}")
    graph = nx.cycle_graph(h)
    for i in range(h):
        graph.add_edges_from((i, h + i * b + k) for k in range(b))
    return graph


def _parse_path(text: str) -> Path:
    if not text:
        raise TopologyError("needs a path")
    return Path(text).expanduser()


def _from_file(path: Path, n: int, seed: int) -> nx.Graph:
    graph = load_graph_file(path)
    if graph.number_of_nodes() != n:
        raise TopologyError(f"graph file {path} has {graph.number_of_nodes()} nodes but the run has {n}")
    return graph


BUILTIN: tuple[TopologySpec, ...] = (
    TopologySpec(name="ring", summary="cycle", build=lambda _, n, seed: nx.cycle_graph(n)),
    TopologySpec(
        name="torus", summary="2-D torus, n = rows x cols as square as can be", build=_torus_or_grid(True)
    ),
    TopologySpec(
        name="grid", summary="2-D grid, n = rows x cols as square as can be", build=_torus_or_grid(False)
    ),
    TopologySpec(name="complete", summary="every pair", build=lambda _, n, seed: nx.complete_graph(n)),
    TopologySpec(name="star", summary="node 0 is the hub", build=lambda _, n, seed: nx.star_graph(n - 1)),
    TopologySpec(
        name="erdos-renyi",
        form="P",
        example="erdos-renyi:0.2",
        summary="each edge with probability P, re-drawn until connected",
        parse=_parse_probability,
        build=_erdos_renyi,
    ),
    TopologySpec(
        name="regular",
        form="K",
        example="regular:4",
        summary="random K-regular (n*K even)",
        parse=_one_int("K", "a degree", 1),
        build=_regular,
    ),
    TopologySpec(
        name="watts-strogatz",
        form="K:P",
        example="watts-strogatz:4:0.1",
        summary="ring lattice of degree K, each edge rewired with probability P",
        parse=_parse_watts_strogatz,
        build=_watts_strogatz,
    ),
    TopologySpec(
        name="barabasi-albert",
        form="M",
        example="barabasi-albert:2",
        summary="preferential attachment, M edges per new node",
        parse=_one_int("M", "a number of edges per new node", 1),
        build=_barabasi_albert,
    ),
    TopologySpec(name="exponential", summary="node i links to i +- 2^j (mod n)", build=_exponential),
    TopologySpec(
        name="dumbbell",
        form="B",
        example="dumbbell:2",
        summary="two cliques joined by B edges (dumbbell alone: B = 1)",
        parse=_parse_dumbbell,
        build=_dumbbell,
        min_nodes=4,
    ),
    TopologySpec(
        name="malicious-ring",
        form="H:B",
        example="malicious-ring:5:2",
        summary="H nodes in a ring, each with B extra neighbours (nodes H.., meant to be Byzantine); n = H(B+1)",
        parse=_parse_malicious_ring,
        build=_malicious_ring,
    ),
    TopologySpec(
        name="file",
        form="PATH",
        example="file:graph.graphml",
        summary="a graph file: .graphml, .json (node-link) or an edge list",
        parse=_parse_path,
        build=_from_file,
        min_nodes=1,
    ),
    TopologySpec(
        name="dynamic-regular",
        form="K",
        example="dynamic-regular:4",
        summary="a fresh random K-regular graph every round",
        parse=_one_int("K", "a degree", 1),
        build=_regular,
        rounds=lambda k, n, seed: TimeVarying(n, k, seed).graph,
    ),
)

ENTRY_POINT_GROUP = "phalanx.topologies"

#: How each built-in topology is written (``regular:K``), in the order of :data:`BUILTIN`.
TOPOLOGY_NAMES = tuple(spec.usage for spec in BUILTIN)


@cache
def topologies() -> dict[str, TopologySpec]:
    """Every registered topology by name: the built-in ones, then those of installed plug-ins."""
    found = {spec.name: spec for spec in BUILTIN}
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            spec = ep.load()
        except Exception as exc:  # a broken plug-in is one line, not a traceback
            raise TopologyError(f"entry point {ep.name} ({ep.value}) failed to load: {exc}") from None
        if not isinstance(spec, TopologySpec):
            raise TopologyError(f"entry point {ep.name} ({ep.value}) is not a TopologySpec")
        found.setdefault(spec.name, spec)
    return found


def register(spec: TopologySpec) -> None:
    """Add ``spec`` for this process (what an entry point does for an installed plug-in)."""
    if not isinstance(spec, TopologySpec):
        raise TopologyError(f"{spec!r} is not a TopologySpec")
    if not spec.name or ":" in spec.name:
        raise TopologyError(f"a topology name must be non-empty and without ':', got {spec.name!r}")
    table = topologies()
    if spec.name in table and table[spec.name] is not spec:
        raise TopologyError(f"a topology named {spec.name!r} is registered already")
    table[spec.name] = spec


def names() -> tuple[str, ...]:
    """How every registered topology is written (``regular:K``), in registration order."""
    return tuple(spec.usage for spec in topologies().values())


def help_text() -> str:
    """The ``--topology`` choices, for the CLI's help."""
    return ", ".join(names())


def parse(text: str) -> Topology:
    """The topology ``text`` names, its parameters parsed, or :class:`TopologyError` (one line)."""
    name, _, rest = text.partition(":")
    spec = topologies().get(name)
    if spec is None:
        raise TopologyError(f"unknown topology {text!r}; choose one of: {help_text()}")
    try:
        params = spec.parse(rest)
    except TopologyError as exc:
        example = f", as in {spec.example}" if spec.example else ""
        raise TopologyError(f"topology {text!r}: {exc}; expected {spec.usage}{example}") from None
    return Topology(text, spec, params)


def build_graph(spec: str, n: int, *, seed: int) -> nx.Graph:
    """The graph named by ``spec`` on n nodes (for ``file:`` the file decides n; check it against n)."""
    return parse(spec).build(n, seed)


def is_time_varying(spec: str) -> bool:
    """Whether the topology ``spec`` names changes every round (False for an unknown one)."""
    found = topologies().get(spec.partition(":")[0])
    return found is not None and found.time_varying
