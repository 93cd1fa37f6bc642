"""Topologies are connected and shaped as named; mixing weights are stochastic; files load; errors are clear."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pytest

from phalanx.sim.mixing import MIXING_NAMES, mixing_matrix, spectral_gap
from phalanx.sim.topology import TimeVarying, TopologyError, build_graph

SPECS = [
    "ring",
    "torus",
    "grid",
    "complete",
    "star",
    "erdos-renyi:0.3",
    "regular:4",
    "watts-strogatz:4:0.2",
    "barabasi-albert:2",
    "exponential",
    "dumbbell:2",
    "dynamic-regular:4",
]


@pytest.mark.parametrize("spec", SPECS)
def test_every_topology_is_connected_on_n_nodes(spec: str) -> None:
    g = build_graph(spec, 16, seed=3)
    assert g.number_of_nodes() == 16 and sorted(g) == list(range(16))
    assert nx.is_connected(g)
    assert nx.number_of_selfloops(g) == 0


def test_shapes() -> None:
    assert all(d == 2 for _, d in build_graph("ring", 10, seed=0).degree())
    assert all(d == 4 for _, d in build_graph("torus", 16, seed=0).degree())
    assert all(d == 5 for _, d in build_graph("regular:5", 12, seed=0).degree())
    assert build_graph("star", 9, seed=0).degree[0] == 8
    assert build_graph("dumbbell:3", 10, seed=0).number_of_edges() == 2 * 10 + 3
    assert build_graph("exponential", 8, seed=0).degree[0] == 5  # +-1, +-2, 4


def test_same_seed_same_graph_and_time_varying_changes() -> None:
    a, b = build_graph("regular:3", 20, seed=7), build_graph("regular:3", 20, seed=7)
    assert set(a.edges) == set(b.edges)
    tv = TimeVarying(20, 3, seed=7)
    assert set(tv.graph(0).edges) == set(TimeVarying(20, 3, seed=7).graph(0).edges)
    assert set(tv.graph(0).edges) != set(tv.graph(1).edges)


@pytest.mark.parametrize("scheme", MIXING_NAMES)
def test_mixing_rows_sum_to_one(scheme: str) -> None:
    w = mixing_matrix(build_graph("barabasi-albert:2", 20, seed=1), scheme)
    assert np.allclose(w.sum(axis=1), 1.0)
    assert (w >= 0).all()
    if scheme != "uniform":
        assert np.allclose(w, w.T)


def test_spectral_gap_orders_topologies() -> None:
    ring = spectral_gap(mixing_matrix(build_graph("ring", 16, seed=0), "metropolis"))
    expo = spectral_gap(mixing_matrix(build_graph("exponential", 16, seed=0), "metropolis"))
    full = spectral_gap(mixing_matrix(build_graph("complete", 16, seed=0), "metropolis"))
    assert 0 < ring < expo < full
    assert full == pytest.approx(1.0)


def test_graph_files(tmp_path) -> None:
    edges = tmp_path / "g.txt"
    edges.write_text("# a triangle and a tail\na b latency=0.5\nb c\nc a bandwidth=1000\nc d\n")
    g = build_graph(f"file:{edges}", 4, seed=0)
    assert g.number_of_edges() == 4
    assert g.edges[0, 1]["latency"] == 0.5
    src = nx.cycle_graph(5)
    nx.write_graphml(src, tmp_path / "g.graphml")
    assert build_graph(f"file:{tmp_path / 'g.graphml'}", 5, seed=0).number_of_edges() == 5
    (tmp_path / "g.json").write_text(json.dumps(nx.node_link_data(src, edges="links")))
    assert build_graph(f"file:{tmp_path / 'g.json'}", 5, seed=0).number_of_edges() == 5


@pytest.mark.parametrize(
    ("spec", "n", "match"),
    [
        ("nope", 8, "unknown topology"),
        ("regular:3", 9, "even"),
        ("regular", 8, "needs a degree"),
        ("erdos-renyi:abc", 8, "not a valid"),
        ("watts-strogatz:4", 8, "needs K and P"),
        ("ring", 1, "at least 2"),
    ],
)
def test_bad_specs(spec: str, n: int, match: str) -> None:
    with pytest.raises(TopologyError, match=match):
        build_graph(spec, n, seed=0)


def test_disconnected_file_is_rejected(tmp_path) -> None:
    path = tmp_path / "two.txt"
    path.write_text("0 1\n2 3\n")
    with pytest.raises(TopologyError, match="not connected"):
        build_graph(f"file:{path}", 4, seed=0)
    with pytest.raises(TopologyError, match="has 4 nodes but the run has 5"):
        path.write_text("0 1\n1 2\n2 3\n")
        build_graph(f"file:{path}", 5, seed=0)


def test_edge_list_node_names_keep_their_numbers(tmp_path) -> None:
    """Node "10" of a file is node 10 (a string sort would make it node 2): ids name Byzantine nodes."""
    edges = tmp_path / "star.txt"
    edges.write_text("".join(f"10 {i}\n" for i in range(10)) + "10 11\n")
    g = build_graph(f"file:{edges}", 12, seed=0)
    assert list(g.nodes) == list(range(12))
    assert g.degree[10] == 11 and g.degree[2] == 1
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("b a\n2 b\n10 2\n")
    # "2" -> 0, "10" -> 1, then "a" -> 2, "b" -> 3
    got = sorted(tuple(sorted(e)) for e in build_graph(f"file:{mixed}", 4, seed=0).edges)
    assert got == [(0, 1), (0, 3), (2, 3)]
