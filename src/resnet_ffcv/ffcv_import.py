"""Importing FFCV without compiling numba's dictionary: seconds off the start of every process that reads .ffcv.

ffcv 1.0.x's ``ffcv/fields/rgb_image.py`` keeps two constants, ``IMAGE_MODES = {'jpg': 0, 'raw': 1}``, in a
``numba.typed.Dict``, and building that dictionary makes numba compile its dictionary implementation with LLVM:
about 3 s of CPU (5-8 s on a busy machine) on ``import ffcv``, in every fit, validate and predict process and in
every DDP rank, before any data is read. FFCV reads the two constants only from Python: to capture them as
constants of the pipeline code it generates, and to fill the header of an image it writes. A plain ``dict``
gives the same values without the compile, so this finder runs that one module with ``numba.typed.Dict`` bound
to ``dict`` (restored as soon as the module is loaded) and leaves every other module alone.

``install()`` runs when ``resnet_ffcv`` is imported (``resnet_ffcv/__init__.py``), before anything of ours
imports ffcv. A process that imports ffcv first simply pays the compile.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

MODULE = "ffcv.fields.rgb_image"


class _PlainImageModes(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader.exec_module = _with_plain_dict(spec.loader.exec_module)
        return spec


def _with_plain_dict(exec_module):
    def exec_with_plain_dict(module) -> None:
        import numba.typed

        typed_dict = numba.typed.Dict
        numba.typed.Dict = dict
        try:
            exec_module(module)
        finally:
            numba.typed.Dict = typed_dict

    return exec_with_plain_dict


def install() -> None:
    """Puts the finder first on ``sys.meta_path`` (once); a no-op when ffcv is already imported."""
    if MODULE not in sys.modules and not any(isinstance(f, _PlainImageModes) for f in sys.meta_path):
        sys.meta_path.insert(0, _PlainImageModes())
