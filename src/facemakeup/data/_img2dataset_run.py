"""Runs img2dataset's ``download(**options)`` in this process: ``python -m facemakeup.data._img2dataset_run JSON``.

img2dataset's package imports ``wandb`` and ``albumentations`` at its top, and uses them only for wandb
logging and for resizing / blurring, which ``data.download`` never asks for; neither is installed
beside facemakeup (see ``data.download``). Before img2dataset is imported, each of the two that is
missing becomes an ``_Unavailable`` module, which raises ``ImportError`` on any use. This happens at
import time of this module, so img2dataset's worker processes (started with ``spawn``, which imports
the parent's main module first) get the same modules.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types


class _Unavailable(types.ModuleType):
    """Stands in for a module img2dataset imports but that this install leaves out; any use raises."""

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise ImportError(f"{self.__name__} is not installed: facemakeup runs img2dataset without {self.__name__} "
                          f"(no wandb logging, no resizing or blurring); pip install {self.__name__} to use that")


for _name in ("wandb", "albumentations"):
    if importlib.util.find_spec(_name) is None:
        sys.modules.setdefault(_name, _Unavailable(_name))


def main(argv: list[str]) -> None:
    from img2dataset import download

    download(**json.loads(argv[0]))


if __name__ == "__main__":
    main(sys.argv[1:])
