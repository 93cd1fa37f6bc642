"""``phalanx sweep --ray``: a real Ray cluster on 127.0.0.1 (2 CPUs) gives the local pool's files, bit for bit."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from phalanx.cli import main
from phalanx.sim.report import read_run

ray = pytest.importorskip(
    "ray", reason="the optional extra phalanx[ray] is not installed (pip install 'ray>=2.9')"
)

pytestmark = [pytest.mark.slow, pytest.mark.network]

GRID = [
    *("--dataset", "blobs", "--nodes", "6", "--rounds", "3", "--topology", "ring", "--eval-every", "1"),
    *("--rule", "trimmed-mean", "--rule-param", "f=1"),
    *("--grid", "byzantine_fraction=0,0.34", "--seeds", "0,1"),
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A Ray cluster of 2 CPUs on 127.0.0.1, started by this test; its address for other processes."""
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def strip(rows):
    return [{k: v for k, v in r.items() if not k.startswith("wall_time")} for r in rows]


def test_ray_cluster_writes_the_local_pools_files(cluster, tmp_path) -> None:
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert main(["sweep", *GRID, "--workers", "2", "--out", str(local)]) == 0
    # another process, a driver of its own, reaches the cluster by its address as a user would
    done = subprocess.run(
        [sys.executable, "-m", "phalanx", "sweep", *GRID, "--ray", cluster, "--out", str(remote)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"on Ray at {cluster} (2 CPUs)" in done.stdout
    for name in ("results.csv", "heatmap.png", "heatmap.pdf"):
        assert (local / name).read_bytes() == (remote / name).read_bytes(), name
    files = sorted(p.relative_to(local) for p in local.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(remote) for p in remote.rglob("*") if p.is_file())
    for path in files:
        if path.suffix in (".png", ".pdf") or path.name == "config.toml":
            assert (local / path).read_bytes() == (remote / path).read_bytes(), path
        elif path.name == "metrics.jsonl":  # the same, but for wall-clock times
            assert strip(read_run((local / path).parent).rows) == strip(read_run((remote / path).parent).rows)
