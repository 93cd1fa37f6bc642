"""Partitions are disjoint, cover the training set, are deterministic, and Dirichlet approaches IID."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from phalanx.node.partition import PartitionError, parse_partition, partition, shard_of

labels_st = st.lists(st.integers(0, 9), min_size=20, max_size=400).map(np.array)
spec_st = st.sampled_from(["iid", "dirichlet:0.1", "dirichlet:1.0", "dirichlet:100", "shards:1", "shards:2"])


@given(labels=labels_st, n=st.integers(1, 10), spec=spec_st, seed=st.integers(0, 2**32 - 1))
def test_shards_are_disjoint_and_cover(labels, n, spec, seed):
    parts = partition(labels, n, spec, seed=seed)
    assert len(parts) == n
    joined = np.concatenate(parts)
    assert len(joined) == len(labels)
    assert np.array_equal(np.sort(joined), np.arange(len(labels)))


@given(labels=labels_st, n=st.integers(1, 10), spec=spec_st, seed=st.integers(0, 1000), data=st.data())
def test_a_node_computes_its_own_shard_alone_and_deterministically(labels, n, spec, seed, data):
    index = data.draw(st.integers(0, n - 1))
    everyone = partition(labels, n, spec, seed=seed)
    assert np.array_equal(shard_of(labels.copy(), n, index, spec, seed=seed), everyone[index])


@given(labels=labels_st, n=st.integers(1, 10), seed=st.integers(0, 1000))
def test_iid_sizes_differ_by_at_most_one(labels, n, seed):
    sizes = [len(p) for p in partition(labels, n, "iid", seed=seed)]
    assert max(sizes) - min(sizes) <= 1


def _label_skew(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each node's label histogram and the global one."""
    classes = np.unique(labels)
    glob = np.array([(labels == c).mean() for c in classes])
    tvs = []
    for p in parts:
        if len(p) == 0:
            tvs.append(1.0)
            continue
        local = np.array([(labels[p] == c).mean() for c in classes])
        tvs.append(0.5 * np.abs(local - glob).sum())
    return float(np.mean(tvs))


@given(seed=st.integers(0, 10_000))
def test_dirichlet_approaches_iid_as_alpha_grows(seed):
    labels = np.random.default_rng(seed).integers(0, 10, size=5000)
    skew = [
        _label_skew(labels, partition(labels, 10, f"dirichlet:{a}", seed=seed)) for a in (0.1, 10, 10_000)
    ]
    assert skew[0] > skew[1] > skew[2]
    assert skew[2] < 0.05


def test_shards_give_each_node_few_classes():
    labels = np.repeat(np.arange(10), 100)
    for p in partition(labels, 10, "shards:2", seed=3):
        assert len(np.unique(labels[p])) <= 2


@pytest.mark.parametrize(
    ("spec", "n", "message"),
    [
        ("dirichlet:0", 2, "alpha must be a finite number > 0"),
        ("dirichlet:-1", 2, "alpha must be a finite number > 0"),
        ("dirichlet:x", 2, "needs a number alpha"),
        ("shards:0", 2, "whole number k >= 1"),
        ("zipf", 2, "unknown partition 'zipf'"),
        ("iid", 11, "more nodes (11) than training samples (10)"),
        ("iid", 0, "at least 1 node"),
        ("shards:3", 4, "exceeds the 10 training samples"),
    ],
)
def test_bad_partitions_name_the_problem(spec, n, message):
    with pytest.raises(PartitionError, match=None) as info:
        partition(np.arange(10) % 3, n, spec, seed=0)
    assert message in str(info.value)


def test_index_out_of_range():
    with pytest.raises(PartitionError, match="out of range"):
        shard_of(np.zeros(10), 3, 3, "iid", seed=0)


def test_parse_partition():
    assert parse_partition("dirichlet:0.5") == ("dirichlet", 0.5)
    assert parse_partition("shards:2") == ("shards", 2.0)


@given(
    n=st.integers(4, 40),
    groups=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_clusters_give_each_cluster_its_own_classes_iid_inside(n: int, groups: int, seed: int) -> None:
    labels = np.repeat(np.arange(10), 50)
    if groups > n:
        return
    shards = partition(labels, n, f"clusters:{groups}", seed=seed)
    flat = np.concatenate(shards)
    assert len(flat) == len(labels) and len(np.unique(flat)) == len(labels)  # disjoint, covering
    clusters = [i * groups // n for i in range(n)]
    for g in range(groups):
        held = {int(c) for i in range(n) if clusters[i] == g for c in labels[shards[i]]}
        assert held == {c for c in range(10) if c % groups == g}  # the cluster's own label set


def test_clusters_from_a_file_and_bad_cluster_specs(tmp_path) -> None:
    labels = np.repeat(np.arange(4), 20)
    path = tmp_path / "groups.txt"
    path.write_text("left\nleft\nright\nright\n")
    shards = partition(labels, 4, f"clusters:{path}", seed=0)
    assert {int(c) for c in labels[np.concatenate(shards[:2])]} == {0, 2}
    assert {int(c) for c in labels[np.concatenate(shards[2:])]} == {1, 3}
    with pytest.raises(PartitionError, match="names 4 nodes, the run has 5"):
        partition(np.repeat(np.arange(4), 20), 5, f"clusters:{path}", seed=0)
    with pytest.raises(PartitionError, match="clusters needs G >= 1"):
        parse_partition("clusters:0")
    with pytest.raises(PartitionError, match="cannot read the cluster file"):
        partition(labels, 4, f"clusters:{tmp_path / 'missing.txt'}", seed=0)
