"""The command line as a user runs it: a real process, one clear error line and exit 2 on bad input."""

import gzip
import subprocess
import sys

import pytest

from phalanx import __version__


def phalanx(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "phalanx", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_version_and_help():
    assert phalanx("--version").stdout.strip() == f"phalanx {__version__}"
    out = phalanx("--help")
    assert out.returncode == 0 and "train" in out.stdout


def test_train_prints_progress_and_a_final_line():
    out = phalanx("train", "--dataset", "blobs", "--steps", "60", "--eval-every", "30", "--no-progress")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("train: model mlp")
    assert sum(line.startswith("step ") for line in lines) == 2
    assert lines[-1].startswith("final: test accuracy ")
    assert float(lines[-1].split()[3]) > 0.5


def _write(path, magic, dims, body_len):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    path.write_bytes(gzip.compress(header + bytes(body_len)))


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--dataset", "cifar"], "unknown dataset 'cifar'"),
        (["--model", "vgg"], "unknown model 'vgg'"),
        (["--partition", "dirichlet:0"], "alpha must be a finite number > 0"),
        (["--partition", "dirichlet:-2"], "alpha must be a finite number > 0"),
        (["--nodes", "9000"], "more nodes (9000) than training samples (8000)"),
        (["--nodes", "4", "--index", "4"], "node index 4 out of range for 4 nodes"),
        (["--lr", "-1"], "argument --lr"),
        (["--steps", "zero"], "argument --steps"),
        (["--dataset", "idx:/nonexistent/dir"], "not a directory"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, needle):
    out = phalanx("train", *args)
    assert out.returncode == 2
    assert needle in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("images", "labels", "needle"),
    [
        ((2049, (5, 28, 28), 5 * 784), (2049, (5,), 5), "wrong IDX magic 2049, expected 2051"),
        ((2051, (5, 28, 28), 4 * 784), (2049, (5,), 5), "truncated"),
    ],
)
def test_corrupt_idx_files_are_named(tmp_path, images, labels, needle):
    _write(tmp_path / "t10k-images-idx3-ubyte.gz", *images)
    _write(tmp_path / "t10k-labels-idx1-ubyte.gz", *labels)
    out = phalanx("train", "--dataset", f"idx:{tmp_path}")
    assert out.returncode == 2
    assert needle in out.stderr and "t10k-images-idx3-ubyte.gz" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
