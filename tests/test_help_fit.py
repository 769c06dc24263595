"""``resnet-ffcv fit --help`` describes every ``model.*`` key and the main ``data.*`` keys.

jsonargparse takes each description from the ``Args:`` section of the class docstring; a statement placed
above the docstring turns it into a plain expression, and every key then shows only its type.
"""

from __future__ import annotations

import inspect
import re

import pytest

from resnet_ffcv.recipe.module import ImageClassifier

from .helpers import run_cli


@pytest.fixture(scope="module")
def fit_help() -> dict[str, str]:
    """``--key`` -> the help text printed for it (description and type), from a real ``fit --help``."""
    result = run_cli("fit", "--help", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    entries: dict[str, str] = {}
    # argparse prints an option as "  --key METAVAR  text" (or the text indented on the next lines); a linked
    # key (model.num_classes <- data.num_classes) as "  data.key --> model.key [applied on ...]  text".
    for block in re.split(r"\n(?=  --|  [\w.]+ --> )", result.stdout):
        option = re.match(r"  (--[\w.]+)(?: \S+)?\s*(.*)", block, flags=re.DOTALL)
        link = re.match(r"  [\w.]+ --> ([\w.]+) \[[^\]]*\]\s*(.*)", block, flags=re.DOTALL)
        if option or link:
            key, text = (option or link).groups()
            entries[key if option else f"--{key}"] = " ".join(text.split())
    return entries


def test_every_model_key_has_its_description(fit_help):
    keys = [name for name in inspect.signature(ImageClassifier.__init__).parameters if name != "self"]
    assert [key for key in keys if f"--model.{key}" not in fit_help] == []
    undescribed = [key for key in keys if fit_help[f"--model.{key}"].startswith("(type:")]
    assert undescribed == [], f"model keys without a description in fit --help: {undescribed}"


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("--model.lr", "peak learning rate"),
        ("--model.ema_decay", "EMA decay per optimizer step"),
        ("--model.scheduler", "LR shape over fractional epochs"),
        ("--data.batch_size", "per device"),
        ("--data.data_dir", "folder holding"),
    ],
)
def test_key_descriptions_come_from_the_docstrings(fit_help, key, words):
    assert words in fit_help[key], f"{key}: {fit_help.get(key)!r}"
