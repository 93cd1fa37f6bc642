"""Topologies are connected and shaped as named; mixing weights are stochastic; files load; errors are clear."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import networkx as nx
import numpy as np
import pytest

from phalanx.sim import topology
from phalanx.sim.mixing import MIXING_NAMES, mixing_matrix, spectral_gap
from phalanx.sim.topology import TimeVarying, TopologyError, TopologySpec, build_graph

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
    "malicious-ring:4:3",
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
        ("nope", 8, "unknown topology 'nope'; choose one of: ring, .*malicious-ring:H:B"),
        ("regular:3", 9, "topology 'regular:3' on 9 nodes: .*n\\*k even"),
        ("regular", 8, "topology 'regular': needs a degree K; expected regular:K, as in regular:4"),
        ("regular:9", 8, "topology 'regular:9' on 8 nodes: K must be in 1..7, got 9"),
        (
            "erdos-renyi:abc",
            8,
            "topology 'erdos-renyi:abc': P must be a number, got 'abc'; expected erdos-renyi:P",
        ),
        ("erdos-renyi:0", 8, "P must be > 0"),
        ("watts-strogatz:4", 8, "needs K and P; expected watts-strogatz:K:P, as in watts-strogatz:4:0.1"),
        ("malicious-ring:5", 8, "needs H and B; expected malicious-ring:H:B"),
        ("malicious-ring:3:1", 8, "it has 6 nodes, the run has 8"),
        ("dumbbell:0", 8, "B must be >= 1, got 0; expected dumbbell:B"),
        ("dumbbell", 3, "topology 'dumbbell' needs at least 4 nodes, got 3"),
        ("ring:3", 8, "topology 'ring:3': takes no parameters; expected ring$"),
        ("file:", 8, "topology 'file:': needs a path; expected file:PATH"),
        ("ring", 1, "at least 2"),
    ],
)
def test_bad_specs(spec: str, n: int, match: str) -> None:
    with pytest.raises(TopologyError, match=match) as info:
        build_graph(spec, n, seed=0)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("spec", [s for s in topology.BUILTIN if s.form])
def test_a_badly_written_spec_is_one_line_naming_the_topology_and_its_form(spec: TopologySpec) -> None:
    for rest in ("", "x", "1:2:3:4"):
        if spec.name in ("file", "dumbbell") and rest != "":
            continue  # any path is a path; dumbbell alone is dumbbell:1
        if spec.name == "dumbbell":
            rest = "x"
        text = f"{spec.name}:{rest}"
        with pytest.raises(TopologyError) as info:
            topology.parse(text)
        message = str(info.value)
        assert message.startswith(f"topology {text!r}: ") and f"expected {spec.usage}" in message
        assert "\n" not in message


def test_the_registry_names_every_builtin_and_the_help_lists_them_all() -> None:
    assert tuple(s.usage for s in topology.BUILTIN) == topology.TOPOLOGY_NAMES
    assert set(topology.TOPOLOGY_NAMES) <= set(topology.names())
    assert "malicious-ring:H:B" in topology.help_text()  # the CLI's help had drifted without it
    for spec in topology.BUILTIN:
        assert spec.usage in topology.help_text()
        assert not spec.example or topology.parse(spec.example).spec is spec
    assert [s.name for s in topology.BUILTIN if s.time_varying] == ["dynamic-regular"]
    assert topology.is_time_varying("dynamic-regular:4") and not topology.is_time_varying("regular:4")
    assert not topology.is_time_varying("nope:4")


def _rotating_ring(shift: int, n: int, seed: int) -> Callable[[int], nx.Graph]:
    """Round r's graph: the ring whose node order is rotated by r * shift (a toy time-varying topology)."""

    def graph(r: int) -> nx.Graph:
        order = np.random.default_rng([seed, r * shift]).permutation(n)
        return nx.relabel_nodes(nx.cycle_graph(n), {i: int(v) for i, v in enumerate(order)})

    return graph


def _parse_shift(text: str) -> int:
    if not text.isdigit():
        raise TopologyError("needs S")
    return int(text)


ROTATING = TopologySpec(
    name="test-rotating-ring",
    form="S",
    example="test-rotating-ring:1",
    summary="a ring in a fresh seeded order every round",
    parse=_parse_shift,
    build=lambda s, n, seed: _rotating_ring(s, n, seed)(0),
    rounds=_rotating_ring,
)


@pytest.fixture
def registered() -> Iterator[TopologySpec]:
    topology.register(ROTATING)
    try:
        yield ROTATING
    finally:
        topology.topologies().pop(ROTATING.name)


def test_a_registered_topology_is_built_named_and_time_varying_by_its_spec(registered: TopologySpec) -> None:
    """One spec and one register() call: build_graph, the help, is_time_varying and the simulator's
    per-round weights (_schedules) all follow it; nothing else names it."""
    from phalanx.sim.experiment import _schedules

    g = build_graph("test-rotating-ring:2", 8, seed=1)
    assert sorted(d for _, d in g.degree()) == [2] * 8
    assert "test-rotating-ring:S" in topology.help_text()
    assert topology.is_time_varying("test-rotating-ring:2")
    with pytest.raises(TopologyError, match="'test-rotating-ring:x': needs S; expected test-rotating-ring:S"):
        topology.parse("test-rotating-ring:x")
    config = SimpleNamespace(topology="test-rotating-ring:2", nodes=8, seed=1, mixing="metropolis")
    for_node, weights_at = _schedules(SimpleNamespace(config=config))  # type: ignore[arg-type]
    graph_at = _rotating_ring(2, 8, 1)
    for r in (0, 3):
        assert {i: set(w) for i, w in weights_at(r).items()} == {i: set(graph_at(r)[i]) for i in range(8)}
        assert set(for_node("5")(r)) == {str(j) for j in graph_at(r)[5]}
    assert weights_at(0) != weights_at(3)


def test_register_refuses_a_taken_name_or_a_bad_one(registered: TopologySpec) -> None:
    topology.register(registered)  # the same spec again: a no-op
    with pytest.raises(TopologyError, match="registered already"):
        topology.register(dataclasses.replace(registered))
    with pytest.raises(TopologyError, match="without ':'"):
        topology.register(dataclasses.replace(registered, name="a:b"))
    with pytest.raises(TopologyError, match="not a TopologySpec"):
        topology.register("ring")  # type: ignore[arg-type]


def test_entry_points_register_out_of_tree_topologies(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    def fake(group: str) -> list[importlib.metadata.EntryPoint]:
        assert group == "phalanx.topologies"
        return [importlib.metadata.EntryPoint("rot", f"{__name__}:ROTATING", group)]

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)
    topology.topologies.cache_clear()
    try:
        assert topology.topologies()["test-rotating-ring"] is ROTATING
        assert build_graph("test-rotating-ring:1", 5, seed=0).number_of_edges() == 5

        def broken(group: str) -> list[importlib.metadata.EntryPoint]:
            return [importlib.metadata.EntryPoint("bad", f"{__name__}:SPECS", group)]

        monkeypatch.setattr(importlib.metadata, "entry_points", broken)
        topology.topologies.cache_clear()
        with pytest.raises(TopologyError, match=r"entry point bad .* is not a TopologySpec"):
            topology.topologies()
    finally:
        monkeypatch.undo()
        topology.topologies.cache_clear()
    assert "test-rotating-ring" not in topology.topologies()


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
