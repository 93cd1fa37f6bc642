"""The Python API: simulate a decentralized learning run, or run one real node, from a script.

    import phalanx
    result = phalanx.simulate(model=MyNet, dataset=(x, y), nodes=16, rounds=20, optimizer="adamw")
    print(result.final_accuracy, result.out)

Everything here is public and documented in docs/api.md; the modules it calls are not. Each function takes
every setting the matching command takes, as keyword arguments named like the TOML keys (``nodes``,
``topology``, ``rule``, ``lr``, ``momentum``, ``optimizer``, ``sam_rho``, ``device``, ...; ``phalanx sim
--help`` and ``phalanx node run --help`` list them), and on top of those the objects a command line cannot
hold: a model factory, a dataset and a loss, in memory. ``phalanx sim`` runs through :func:`prepare` and
:func:`execute`, the two halves of :func:`simulate`.

An in-memory object is recorded in the written ``config.toml`` by its import path (``mypkg.models:MyNet``)
when it has one that resolves to the very object, so the file re-runs with ``phalanx sim --config``;
otherwise by a marker, ``"<python object: __main__.MyNet>"``, which says what ran but cannot be re-run.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from phalanx.sim.config import SimConfig
    from phalanx.sim.experiment import Plan, Result

__all__ = ["NodeResult", "SimulationResult", "describe", "execute", "prepare", "run_node", "simulate"]

#: What a ``model`` may be: a built-in name or ``module:attr`` string, or a factory (any callable that returns
#: an ``nn.Module``: a class or a function, called with the keywords it declares among ``input_shape``,
#: ``num_classes`` and ``seed``).
ModelLike = Any
#: What a ``dataset`` may be: a spec string (``mnist``, ``cifar10:PATH``, ``csv:PATH``, ``pkg:loader``, ...),
#: ``(x, y)`` tensors (20% held out for testing), ``(x_train, y_train, x_test, y_test)``, a torch
#: ``Dataset`` (20% held out), ``(train Dataset, test Dataset)``, or a function of no argument returning any
#: of these.
DatasetLike = Any


def describe(obj: Any) -> str:
    """How ``config.toml`` records an in-memory object: its import path ``module:qualname`` when that
    resolves to ``obj`` itself, else ``<python object: module.qualname>``."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(qualname, str):  # an instance: name its class
        module, qualname = type(obj).__module__, type(obj).__qualname__
    elif module and module != "__main__" and "<" not in qualname:
        from phalanx.node.imports import resolve

        path = f"{module}:{qualname}"
        try:
            if resolve(path) is obj:
                return path
        except (ValueError, ImportError):
            pass
    return f"<python object: {module}.{qualname}>" if module else f"<python object: {qualname}>"


def _dataset_of(data: DatasetLike) -> tuple[str | None, Any]:
    """(the spec string to record, the loaded Dataset or None when the spec string is enough)."""
    if isinstance(data, str):
        return data, None
    from phalanx.node.datasets import from_python

    if callable(data) and not _is_torch_dataset(data):
        name = describe(data)
        try:
            loaded = data()
        except Exception as exc:  # the user's code: one line, as the CLI prints errors
            raise ValueError(f"dataset {name}: failed: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
        return name, from_python(loaded, name)
    name = _describe_data(data)
    return name, from_python(data, name)


def _is_module(obj: Any) -> bool:
    from torch import nn

    return isinstance(obj, nn.Module)


def _copier(module: Any) -> Callable[[], Any]:
    import copy

    def factory() -> Any:
        return copy.deepcopy(module)

    factory.__qualname__ = type(module).__qualname__
    return factory


def _is_torch_dataset(obj: Any) -> bool:
    import torch

    return isinstance(obj, torch.utils.data.Dataset)


def _describe_data(data: Any) -> str:
    shapes = [tuple(getattr(d, "shape", ())) for d in data] if isinstance(data, tuple | list) else []
    if shapes and all(shapes):
        return f"<python object: tensors {' '.join(str(s) for s in shapes)}>"
    return describe(data)


def _split_objects(
    model: ModelLike, dataset: DatasetLike, loss_fn: Any
) -> tuple[dict[str, str], dict[str, Any]]:
    """The config's strings for model, dataset and loss_fn, and the in-memory objects that stand in for them."""
    specs: dict[str, str] = {}
    objects: dict[str, Any] = {}
    if model is not None:
        if isinstance(model, str):
            specs["model"] = model
        elif _is_module(model):  # an instance: every node starts from a copy of it
            specs["model"], objects["model"] = describe(model), _copier(model)
        else:
            if not callable(model):
                raise ValueError(
                    f"model must be a name, module:attr or a factory, got {type(model).__name__}"
                )
            specs["model"], objects["model"] = describe(model), model
    if dataset is not None:
        spec, loaded = _dataset_of(dataset)
        specs["dataset"] = spec or ""
        if loaded is not None:
            objects["dataset"] = loaded
    if loss_fn is not None:
        if isinstance(loss_fn, str):
            specs["loss_fn"] = loss_fn
        else:
            specs["loss_fn"], objects["loss_fn"] = describe(loss_fn), loss_fn
    return specs, objects


def _base_settings(config: Any, preset: str | None) -> dict[str, Any]:
    from phalanx.sim.config import SimConfig, load_preset, load_toml

    data: dict[str, Any] = {}
    if preset:
        data.update(load_preset(preset))
    if isinstance(config, SimConfig):
        data.update(config.to_dict())
    elif isinstance(config, str | Path):
        data.update(load_toml(Path(config)))
    elif isinstance(config, Mapping):
        data.update(config)
    elif config is not None:
        raise ValueError(f"config must be a TOML file path or a mapping, got {type(config).__name__}")
    return data


# ---------------------------------------------------------------------------------------------------- simulate


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulationResult:
    """What a simulated run gives back.

    Attributes:
        rows: one dict per round (``round``, ``acc_mean``/``acc_min``/``acc_max`` on evaluation rounds,
            ``acc_avg`` (the average model's accuracy), ``loss_mean``, ``consensus``, ``bytes``, ...): the lines
            of ``metrics.jsonl``.
        summary: the run's summary (``summary.json``): the last evaluation's figures, traffic, wall time.
        nodes: one dict per honest node after the run (``nodes.jsonl``).
        config: the settings that ran, as plain values (what ``config.toml`` holds).
        out: the run folder, or None when nothing was written.
    """

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    nodes: list[dict[str, Any]]
    config: dict[str, Any]
    out: Path | None = None
    _result: Any = field(default=None, repr=False)  # the internal Result (plots), not part of the API

    @property
    def final_accuracy(self) -> float | None:
        """The honest nodes' mean test accuracy at the last evaluation (None if none ran)."""
        value = self.summary.get("acc_mean")
        return None if value is None else float(value)

    @property
    def accuracy(self) -> list[tuple[int, float]]:
        """(round, mean honest accuracy) of every evaluation round."""
        return [(r["round"], r["acc_mean"]) for r in self.rows if r.get("acc_mean") is not None]


def prepare(
    model: ModelLike = None,
    dataset: DatasetLike = None,
    *,
    loss_fn: Any = None,
    config: Any = None,
    preset: str | None = None,
    **settings: Any,
) -> Plan:
    """Check every setting and fix every random choice before anything trains (the first half of
    :func:`simulate`); a bad setting raises ``ValueError`` with one line naming it."""
    from phalanx.sim.config import from_mapping
    from phalanx.sim.experiment import plan

    specs, objects = _split_objects(model, dataset, loss_fn)
    data = {**_base_settings(config, preset), **settings, **specs}
    return plan(from_mapping(data), **objects)


def execute(
    checked: Plan,
    *,
    out: str | Path | None = None,
    overwrite: bool = False,
    plots: bool = False,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> SimulationResult:
    """Run a :func:`prepare`'d simulation (the second half of :func:`simulate`) and write its folder."""
    from phalanx.sim.experiment import run
    from phalanx.sim.report import check_out_dir, summary, write_run

    folder = Path(out) if out is not None else None
    if folder is not None:
        check_out_dir(folder, overwrite=overwrite)
    result: Result = run(checked, progress=progress)
    info = write_run(result, folder, plots=plots) if folder is not None else summary(result)
    return SimulationResult(
        rows=result.rows,
        summary=info,
        nodes=result.nodes,
        config=_plain(checked.config),
        out=folder,
        _result=result,
    )


def simulate(
    model: ModelLike = None,
    dataset: DatasetLike = None,
    *,
    loss_fn: Any = None,
    config: Any = None,
    preset: str | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    plots: bool = False,
    progress: Callable[[dict[str, Any]], None] | None = None,
    **settings: Any,
) -> SimulationResult:
    """Simulate a decentralized learning run; what ``phalanx sim`` does.

    Args:
        model: a built-in name (``mlp``), ``module:attr``, or a model factory (an ``nn.Module`` class or a
            function returning one; see :data:`ModelLike`). Default: the config's (``mlp``).
        dataset: a spec string, tensors, a torch ``Dataset`` or a loader function (see :data:`DatasetLike`).
        loss_fn: ``"cross-entropy"`` (default), ``module:attr``, or a callable ``loss(outputs, labels)``
            returning the batch mean (an ``nn.Module`` loss instance such as ``nn.MultiMarginLoss()`` too).
        config: a TOML file path or a mapping of settings, under the keyword settings.
        preset: a shipped preset (``phalanx sim --list-presets``), under ``config``.
        out: the run folder to write (``config.toml``, ``metrics.jsonl``, ``summary.json``, ``nodes.jsonl``);
            None writes nothing.
        overwrite: write into a non-empty ``out``.
        plots: also write the PNG figures into ``out``.
        progress: called with each round's metrics row as the round finishes.
        **settings: any ``phalanx sim`` setting by its TOML key: ``nodes``, ``rounds``, ``topology``,
            ``protocol``, ``rule``, ``rule_params``, ``lr``, ``momentum``, ``weight_decay``,
            ``optimizer`` (``sgd``, ``adam``, ``adamw``), ``sam_rho`` (SAM around the optimizer when > 0),
            ``buffers``, ``device``, ``byzantine_fraction``, ``attack``, ...
    Raises:
        ValueError: a setting that cannot run (one line naming it), before anything trains.
    """
    checked = prepare(model, dataset, loss_fn=loss_fn, config=config, preset=preset, **settings)
    return execute(checked, out=out, overwrite=overwrite, plots=plots, progress=progress)


def _plain(config: SimConfig) -> dict[str, Any]:
    from phalanx.sim.report import to_toml

    return tomllib.loads(to_toml(config))


# ---------------------------------------------------------------------------------------------------- run_node


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeResult:
    """What a real node's run gives back: its exit status, its data folder (checkpoint, key) and the
    ``round`` lines of its log (``round``, ``accuracy``, ``loss``, ``received``, ``bytes_in``, ...)."""

    status: int
    data_dir: Path
    rounds: list[dict[str, Any]]

    @property
    def final_accuracy(self) -> float | None:
        evaluated = [r["accuracy"] for r in self.rounds if r.get("accuracy") is not None]
        return float(evaluated[-1]) if evaluated else None


class _Log:
    """The node's JSON-lines log, passed on to ``sink`` and its ``round`` lines kept."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.rounds: list[dict[str, Any]] = []
        self._partial = ""

    def write(self, text: str) -> int:
        import json

        if self.sink is not None:
            self.sink.write(text)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            if line.startswith('{"event":"round"'):
                record = json.loads(line)
                record.pop("event", None)
                self.rounds.append(record)
        return len(text)

    def flush(self) -> None:
        if self.sink is not None:
            self.sink.flush()


def run_node(
    model: ModelLike = None,
    dataset: DatasetLike = None,
    *,
    loss_fn: Any = None,
    config: str | Path | Mapping[str, Any] | None = None,
    log: Any = "stdout",
    **settings: Any,
) -> NodeResult:
    """Run one real node over libp2p until its ``rounds`` are done (or SIGINT); what ``phalanx node run`` does.

    ``model``, ``dataset`` and ``loss_fn`` are as in :func:`simulate`; ``config`` is a node TOML file or a
    mapping; ``settings`` are the node's settings by TOML key (``listen``, ``bootstrap``, ``neighbours``,
    ``data_dir``, ``nodes``, ``index``, ``rounds``, ``protocol``, ``rule``, ``optimizer``, ``device``, ...;
    ``phalanx node run --help`` lists them). ``log``: where the JSON-lines log goes (a file object, None
    for nowhere; default stdout). Every node of a network must build the same model on the same data
    shapes.
    """
    import sys

    from phalanx.node import config as cfg
    from phalanx.node.app import run_node as run

    specs, objects = _split_objects(model, dataset, loss_fn)
    file_values: dict[str, Any] = {}
    if isinstance(config, str | Path):
        file_values = cfg.load_toml(Path(config))
    elif isinstance(config, Mapping):
        file_values = dict(config)
    node_config = cfg.build(file_values, {**settings, **specs})
    sink = _Log(sys.stdout if log == "stdout" else log)
    status = run(node_config, log=sink, **objects)  # type: ignore[arg-type]
    return NodeResult(status=status, data_dir=node_config.data_dir, rounds=sink.rounds)
