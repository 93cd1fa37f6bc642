"""Communication graphs for the simulator, built with networkx from a spec string and a seed.

Nodes are the integers ``0 .. n-1``. Specs (parameters after colons):

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

Edges may carry ``latency`` (seconds) and ``bandwidth`` (bytes per second); the virtual network uses them.
Every error is a :class:`TopologyError` (a ``ValueError``) with one clear line.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import numpy as np

TOPOLOGY_NAMES = (
    "ring",
    "torus",
    "grid",
    "complete",
    "star",
    "erdos-renyi:P",
    "regular:K",
    "watts-strogatz:K:P",
    "barabasi-albert:M",
    "exponential",
    "dumbbell:B",
    "malicious-ring:H:B",
    "file:PATH",
    "dynamic-regular:K",
)


class TopologyError(ValueError):
    """A topology spec or graph that cannot be used."""


def _num(spec: str, text: str, kind: type, lo: float, hi: float = math.inf) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise TopologyError(f"topology {spec!r}: {text!r} is not a valid {kind.__name__}") from None
    if not lo <= value <= hi:
        raise TopologyError(f"topology {spec!r}: parameter {value} out of range [{lo}, {hi}]")
    return value


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


def build_graph(spec: str, n: int, *, seed: int) -> nx.Graph:
    """The graph named by ``spec`` on n nodes (for ``file:`` the file decides n; check it against n)."""
    name, _, rest = spec.partition(":")
    args = rest.split(":") if rest else []
    if n < 2 and name != "file":
        raise TopologyError(f"a topology needs at least 2 nodes, got {n}")
    if name == "ring":
        graph = nx.cycle_graph(n)
    elif name in ("torus", "grid"):
        rows, cols = _factor(n)
        graph = _relabel(nx.grid_2d_graph(rows, cols, periodic=name == "torus" and min(rows, cols) > 2))
    elif name == "complete":
        graph = nx.complete_graph(n)
    elif name == "star":
        graph = nx.star_graph(n - 1)
    elif name == "erdos-renyi":
        p = _num(spec, args[0] if args else "", float, 0.0, 1.0) if args else 0.0
        if not args or p <= 0:
            raise TopologyError("erdos-renyi needs an edge probability P > 0, as in erdos-renyi:0.2")
        for attempt in range(1000):
            graph = nx.gnp_random_graph(n, p, seed=seed + attempt)
            if nx.is_connected(graph):
                break
        else:
            raise TopologyError(f"erdos-renyi:{p} on {n} nodes stayed disconnected after 1000 draws; raise P")
    elif name in ("regular", "dynamic-regular"):
        k = int(_num(spec, args[0] if args else "", int, 1, n - 1)) if args else 0
        if not args:
            raise TopologyError(f"{name} needs a degree K, as in {name}:4")
        graph = random_regular(n, k, seed=seed)
    elif name == "watts-strogatz":
        if len(args) != 2:
            raise TopologyError("watts-strogatz needs K and P, as in watts-strogatz:4:0.1")
        k = int(_num(spec, args[0], int, 2, n - 1))
        p = _num(spec, args[1], float, 0.0, 1.0)
        graph = nx.connected_watts_strogatz_graph(n, k, p, tries=1000, seed=seed)
    elif name == "barabasi-albert":
        m = int(_num(spec, args[0], int, 1, n - 1)) if args else 0
        if not args:
            raise TopologyError("barabasi-albert needs M, as in barabasi-albert:2")
        graph = nx.barabasi_albert_graph(n, m, seed=seed)
    elif name == "exponential":
        graph = nx.Graph()
        graph.add_nodes_from(range(n))
        hop = 1
        while hop < n:
            graph.add_edges_from((i, (i + hop) % n) for i in range(n))
            hop *= 2
        graph.remove_edges_from(list(nx.selfloop_edges(graph)))
    elif name == "dumbbell":
        bridges = int(_num(spec, args[0], int, 1, n)) if args else 1
        if n < 4:
            raise TopologyError("dumbbell needs at least 4 nodes")
        half = n // 2
        graph = nx.complete_graph(half)
        graph.add_edges_from(nx.complete_graph(range(half, n)).edges)
        for b in range(min(bridges, half, n - half)):
            graph.add_edge(b, half + b)
    elif name == "malicious-ring":
        # He, Karimireddy & Jaggi (2022): H honest nodes on a ring, each with B Byzantine neighbours of its own.
        if len(args) != 2:
            raise TopologyError("malicious-ring needs H and B, as in malicious-ring:5:2")
        h = int(_num(spec, args[0], int, 3))
        b = int(_num(spec, args[1], int, 0))
        if n != h * (b + 1):
            raise TopologyError(f"malicious-ring:{h}:{b} has {h * (b + 1)} nodes, the run has {n}")
        graph = nx.cycle_graph(h)
        for i in range(h):
            graph.add_edges_from((i, h + i * b + k) for k in range(b))
    elif name == "file":
        if not rest:
            raise TopologyError("file needs a path, as in file:graph.graphml")
        graph = load_graph_file(Path(rest).expanduser())
        if graph.number_of_nodes() != n:
            raise TopologyError(f"graph file {rest} has {graph.number_of_nodes()} nodes but the run has {n}")
    else:
        raise TopologyError(f"unknown topology {spec!r}; choose one of: {', '.join(TOPOLOGY_NAMES)}")
    if not nx.is_connected(graph):
        raise TopologyError(f"topology {spec!r} on {n} nodes is not connected")
    return graph


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


def is_time_varying(spec: str) -> bool:
    return spec.startswith("dynamic-regular:")
