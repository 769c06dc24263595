"""`import resnet_ffcv` lets a later `import ffcv` skip numba's dictionary compile (resnet_ffcv/ffcv_import.py)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import time
import numba.typed, torch  # imported first, so the time below is ffcv's own
typed_dict = numba.typed.Dict
{first}
start = time.perf_counter()
import ffcv
from ffcv.fields import rgb_image
print(type(rgb_image.IMAGE_MODES).__name__, rgb_image.IMAGE_MODES["jpg"], rgb_image.IMAGE_MODES["raw"],
      numba.typed.Dict is typed_dict, round(time.perf_counter() - start, 2))
"""


def import_ffcv(first: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(first=first)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split()


def test_ffcv_gets_a_plain_dict_for_its_image_modes_and_numba_keeps_its_own():
    plain = import_ffcv("import resnet_ffcv")
    assert plain[:4] == ["dict", "0", "1", "True"]  # the same constants; numba.typed.Dict restored at once
    # Without resnet_ffcv first, ffcv builds its numba.typed.Dict (the compile this avoids; seconds, not asserted).
    assert import_ffcv("")[:4] == ["Dict", "0", "1", "True"]
