"""Optional TensorBoard event files: each metrics row's scalars, one step per round, for a simulated run
(``phalanx sim --tensorboard DIR``, or ``tensorboard = "DIR"`` in its config file) and for a real node
(``phalanx node run --tensorboard DIR``: its round lines, :data:`NODE_TAGS`).

The command opens a :class:`Writer` before training and hands it every metrics row as the round finishes. The writer is
``torch.utils.tensorboard.SummaryWriter``, which needs the ``tensorboard`` package, an optional extra
(``pip install 'phalanx[tensorboard]'``); without it :func:`open_writer` raises one :class:`ConfigError`
line, before any training.

Tags (the row's keys, grouped so that TensorBoard draws the accuracies on one card each):
``accuracy/mean``, ``accuracy/min``, ``accuracy/max``, ``accuracy/avg`` (the averaged honest model),
``loss/mean``, ``loss/min``, ``loss/max``, ``loss/avg``, ``consensus`` (distance to the honest mean),
``bytes``, ``messages``, ``live``, ``virtual_time``. Rows that were not evaluated have no accuracy or
loss, and those tags skip that round.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from phalanx.gossip.fields import ConfigError

__all__ = ["MISSING", "NODE_TAGS", "TAGS", "Writer", "check_available", "open_writer"]

MISSING = (
    "--tensorboard needs the tensorboard package: pip install 'phalanx[tensorboard]' "
    "(or pip install 'tensorboard>=2.14')"
)

#: metrics row key -> TensorBoard tag.
TAGS: dict[str, str] = {
    "acc_mean": "accuracy/mean",
    "acc_min": "accuracy/min",
    "acc_max": "accuracy/max",
    "acc_avg": "accuracy/avg",
    "loss_mean": "loss/mean",
    "loss_min": "loss/min",
    "loss_max": "loss/max",
    "loss_avg": "loss/avg",
    "consensus": "consensus",
    "bytes": "bytes",
    "messages": "messages",
    "live": "live",
    "virtual_time": "virtual_time",
}


#: a real node's round line key -> TensorBoard tag.
NODE_TAGS: dict[str, str] = {
    "accuracy": "accuracy",
    "loss": "loss",
    "bytes_in": "bytes/in",
    "bytes_out": "bytes/out",
    "messages_in": "messages/in",
    "messages_out": "messages/out",
    "rejected": "rejected",
    "peers": "peers",
}


class Writer:
    """Writes metrics rows to one TensorBoard run folder; use as a context manager (closes the file)."""

    def __init__(self, summary_writer: Any, tags: dict[str, str] | None = None) -> None:
        self._writer = summary_writer
        self.tags = TAGS if tags is None else tags
        self.rows = 0

    def write(self, row: dict[str, Any]) -> None:
        """The row's scalars at step ``row["round"]``; missing, ``None`` and non-numeric values are skipped."""
        step = int(row["round"])
        for key, tag in self.tags.items():
            value = row.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            self._writer.add_scalar(tag, float(value), global_step=step)
        self.rows += 1

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _summary_writer() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises it when the tensorboard package is absent
        raise ConfigError(MISSING) from None
    return SummaryWriter


def check_available() -> None:
    """Raise the one-line :class:`ConfigError` unless the tensorboard package can be imported."""
    _summary_writer()


def open_writer(folder: Path, tags: dict[str, str] | None = None) -> Writer:
    """A :class:`Writer` into ``folder`` (created); one ``ConfigError`` line when tensorboard is missing."""
    summary_writer = _summary_writer()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--tensorboard: {folder} exists and is not a folder")
    return Writer(summary_writer(log_dir=str(folder)), tags)
