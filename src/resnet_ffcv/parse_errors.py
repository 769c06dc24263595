"""A config or command-line mistake that jsonargparse refuses (an unknown key, a value of the wrong type) as one
paragraph: the key, where it came from (which ``--config`` file, or the command line), what was expected, the
closest valid keys, and where the full list is. jsonargparse would print the whole ~140-line usage first.

:class:`OneParagraphParser` is the LightningCLI's parser class (``parser_class``); ``--help`` is untouched.
``RESNET_FFCV_DEBUG=1`` keeps jsonargparse's own report (usage, and a traceback with its debug mode).
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import types
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NoReturn

import yaml
from lightning.pytorch.cli import LightningArgumentParser

from resnet_ffcv.errors import UserErrorExit, debug_enabled

# jsonargparse 4.x's wording of the refusals we rewrite (anything else is passed on in one line).
_UNKNOWN = (
    re.compile(r"does not accept option '([^']+)'"),
    re.compile(r"Option '([^']+)' is not accepted"),
    re.compile(r"unrecognized arguments: --?([^\s=]+)"),
)
_BAD_VALUE = re.compile(r'^Parser key "([^"]+)":\s*(.*)$', re.S)
_GIVEN = re.compile(r"(?:Got value|Given value): (.*)")
EXIT_CODE = 2  # argparse's status for a command-line error; also "a check before training refused"


class OneParagraphParser(LightningArgumentParser):
    """LightningCLI's parser whose errors are one ``resnet-ffcv SUBCOMMAND: error:`` paragraph, exit 2."""

    argv: Sequence[str] = ()  # set by the CLI before parsing: where each key came from

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if debug_enabled() or not self.exit_on_error:  # jsonargparse's own tries (exit_on_error off) must raise
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        argv = self.argv or getattr(parser, "argv", ())
        paragraph = f"{_prog(parser)}: error: {explain(message, parser, argv)}"
        print(paragraph, file=sys.stderr)
        raise UserErrorExit(paragraph, EXIT_CODE)


def _prog(parser: argparse.ArgumentParser) -> str:
    return parser.prog.replace(" [options]", "")


def explain(message: str, parser: argparse.ArgumentParser, argv: Sequence[str]) -> str:
    """The paragraph for jsonargparse's ``message`` about ``parser`` (a subcommand's) given ``argv``."""
    help_hint = f"`{_help_command(parser)} --help` lists every key."
    for pattern in _UNKNOWN:
        if match := pattern.search(message):
            key = match.group(1)
            guesses = close_keys(key, valid_keys(parser))
            guess = f" Did you mean {' or '.join(f'`{g}`' for g in guesses)}?" if guesses else ""
            return f"{key} ({key_source(key, argv)}) is not a key {_command(parser)} accepts.{guess} {help_hint}"
    if match := _BAD_VALUE.match(message.strip()):
        key, detail = match.group(1), match.group(2)
        if key == "config":
            return f"--config: {_one_line(detail)}"
        given = _GIVEN.search(detail)
        value = f"={given.group(1).strip()}" if given else ""
        action = _action(parser, key)
        expected = describe_type(action) if action is not None else None
        what = f"expected {expected}" if expected else _one_line(detail)
        return f"{key}{value} ({key_source(key, argv)}): {what}. {help_hint}"
    return f"{_one_line(message)}. {help_hint}"


def _help_command(parser: argparse.ArgumentParser) -> str:
    prog = _prog(parser)
    return prog if " " in prog else f"{prog} fit"  # the tools parse a fit config: fit's --help has its keys


def _command(parser: argparse.ArgumentParser) -> str:
    prog = _prog(parser)
    return f"`{prog.partition(' ')[2]}`" if " " in prog else "a training config"


def _one_line(text: str) -> str:
    return " ".join(text.split()).rstrip(".")


def _actions(parser: argparse.ArgumentParser) -> Iterable[argparse.Action]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        if action.dest in (argparse.SUPPRESS, "help", "config", "print_config"):
            continue
        yield action


def valid_keys(parser: argparse.ArgumentParser) -> list[str]:
    """Every key ``parser`` accepts (``trainer.max_epochs``, ``model.lr``, ...)."""
    return sorted({action.dest for action in _actions(parser)})


def _action(parser: argparse.ArgumentParser, key: str) -> argparse.Action | None:
    return next((action for action in _actions(parser) if action.dest == key), None)


def close_keys(key: str, valid: Sequence[str]) -> list[str]:
    """The valid key nearest to ``key``: by the whole dotted name, else by the last part alone (``max_epoch:`` at
    the top of a file means ``trainer.max_epochs``). One guess, or none: a list of near names reads as noise."""
    found = difflib.get_close_matches(key, valid, n=1, cutoff=0.8)
    if found:
        return found
    leaf = key.rpartition(".")[2]
    by_leaf: dict[str, list[str]] = {}
    for name in valid:
        by_leaf.setdefault(name.rpartition(".")[2], []).append(name)
    near = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.8)
    return by_leaf[near[0]] if near else []


def describe_type(action: argparse.Action) -> str | None:
    """``a float``, ``an integer or null``, ``one of onecycle, cosine`` for the action's type hint."""
    hint = getattr(action, "_typehint", None)
    if hint is None:
        hint = action.type if isinstance(action.type, type) else None
    if action.choices and hint is None:
        return "one of " + ", ".join(map(str, action.choices))
    return None if hint is None else _describe_hint(hint)


_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}


def _describe_hint(hint) -> str:
    if hint in _NAMES:
        return _NAMES[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(str(arg) for arg in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe_hint(arg) for arg in args)
    if origin in (list, tuple, Sequence):
        return f"a list ({', '.join(_describe_hint(arg) for arg in args if arg is not Ellipsis)})"
    return getattr(hint, "__name__", str(hint))


def key_source(key: str, argv: Sequence[str]) -> str:
    """``in FILE`` or ``command line``: the last of ``argv``'s ``--config`` files and options that sets ``key``."""
    source = "source not found"
    args = list(argv)
    for index, arg in enumerate(args):
        name, _, inline = arg.partition("=")
        if name in ("-c", "--config"):
            path = inline or (args[index + 1] if index + 1 < len(args) else "")
            if path and key in _file_keys(path):
                source = f"in {path}"
        elif name.lstrip("-") == key and arg.startswith("--"):
            source = "command line"
    return source


def _file_keys(path: str) -> set[str]:
    try:
        content = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return set()
    return set(_flatten(content)) if isinstance(content, dict) else set()


def _flatten(content: dict, prefix: str = "") -> Iterable[str]:
    for name, value in content.items():
        key = f"{prefix}{name}"
        yield key
        if isinstance(value, dict):
            yield from _flatten(value, f"{key}.")
