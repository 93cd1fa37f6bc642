"""The device setting: spellings, resolution on this machine, and one clear line (exit 2) for an absent device
on every command that trains."""

import pytest
import torch

from phalanx.cli import main
from phalanx.node.device import DeviceError, parse_device, resolve_device

NO_CUDA = not torch.cuda.is_available()
NO_MPS = not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


@pytest.mark.parametrize("spec", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps", " CUDA:1 "])
def test_device_spellings_are_accepted(spec):
    assert parse_device(spec) == spec.strip().lower()


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:-1", "cuda0", "tpu", ""])
def test_other_spellings_are_refused(spec):
    with pytest.raises(DeviceError, match="unknown device"):
        parse_device(spec)


def test_cpu_resolves_to_the_cpu_and_auto_to_the_best_present():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if not NO_CUDA else "mps" if not NO_MPS else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:1"])
def test_absent_cuda_is_a_device_error(spec):
    with pytest.raises(DeviceError, match="no CUDA device"):
        resolve_device(spec)


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
@pytest.mark.parametrize(
    "args",
    [
        ["train", "--dataset", "blobs", "--steps", "1", "--no-progress"],
        ["sim", "--dataset", "blobs", "--no-progress", "--out", "{tmp}/run"],
        ["node", "run", "--dataset", "blobs", "--alone", "train", "--data-dir", "{tmp}/node", "--metrics-port", "-1"],
        ["net", "up", "--nodes", "2", "--dataset", "blobs", "--out", "{tmp}/net"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_an_absent_device_is_one_line_and_exit_2_on_every_command(args, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main([*argv, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and len(err.strip().splitlines()) == 1, err
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_a_misspelt_device_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["sim", "--dataset", "blobs", "--device", "gpu", "--no-progress", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "unknown device 'gpu'" in err and len(err.strip().splitlines()) == 1


def test_training_on_an_explicit_cpu_device_equals_the_default():
    import numpy as np

    from phalanx.node.datasets import make_blobs
    from phalanx.node.learner import Learner

    data = make_blobs(n_train=200, n_test=50, features=8, classes=4)
    a = Learner(dataset=data, shard=np.arange(200))
    b = Learner(dataset=data, shard=np.arange(200), device=resolve_device("auto" if NO_CUDA and NO_MPS else "cpu"))
    a.train(3)
    b.train(3)
    assert torch.equal(a.get_vector(), b.get_vector())
    assert b.get_vector().device.type == "cpu"  # what the wire and the protocol get
