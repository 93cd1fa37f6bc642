"""Resolve ``module:attr`` import paths (as uvicorn does) for user models and datasets.

``mypkg.models:resnet8`` imports ``mypkg.models`` and returns its attribute ``resnet8`` (dotted attributes,
``mod:Cls.make``, are followed). The current directory is put first on ``sys.path``, as uvicorn does, so a
module beside the command resolves in every process that starts there (``net up`` children, ``sweep``
workers), and a local ``examples`` folder is found before any installed package of that name.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Any

IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class ImportPathError(ValueError):
    """An import path that does not resolve."""


def is_import_path(spec: str) -> bool:
    return IMPORT_PATH.match(spec) is not None


def resolve(spec: str) -> Any:
    """The object ``spec`` (``module:attr``) names; raises :class:`ImportPathError` with one line."""
    if not is_import_path(spec):
        raise ImportPathError(f"{spec!r} is not an import path of the form module:attribute")
    module_name, _, attr = spec.partition(":")
    cwd = os.getcwd()
    if not sys.path or sys.path[0] not in ("", cwd):
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ImportPathError(
                f"{spec}: no module named {exc.name!r} (from {cwd} or PYTHONPATH)"
            ) from None
        raise ImportPathError(f"{spec}: importing {module_name} failed: {exc}") from exc
    except Exception as exc:
        message = f"{spec}: importing {module_name} failed: {type(exc).__name__}: {exc}"
        raise ImportPathError(message.splitlines()[0]) from exc  # the traceback with PHALANX_DEBUG=1
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportPathError(f"{spec}: {module_name} has no attribute {attr!r}") from None
    return obj
