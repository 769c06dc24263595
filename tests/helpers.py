"""What several test files need, written once: repository paths, the CLI in a subprocess, checkpoint loading,
a quiet CPU Trainer and a small real checkpoint.

No relative imports: ``ddp_probe.py`` and ``ddp_eval_script.py`` run as scripts (Lightning's DDP launcher
re-runs them for rank 1) and import this module as plain ``helpers``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def load_benchmark(name: str):
    """``benchmarks/NAME.py`` as a module (the benchmarks are scripts, not a package), to share what it builds."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a local server or a DDP master)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cli_command(*args: str) -> list[str]:
    """``resnet-ffcv ARGS`` as a command line, with this interpreter (the entry point may not be installed)."""
    return [sys.executable, "-m", "resnet_ffcv.cli", *args]


# The CLI processes of the tests run FFCV's pipelines interpreted (numba's NUMBA_DISABLE_JIT): the same pipeline
# code and the same files, without the ~4 s of LLVM compile that each of the many processes of the checkpoint,
# spot, resume, watchdog and message tests would pay; what they assert does not depend on it. The tests of the
# user's data path pass ``env=COMPILED`` and run it compiled, as a user does (the end-to-end fit, resume and
# validate, the README's FFCV stack, predict and evaluate), as do every in-process test, the DDP probes and the
# benchmark tests (all but the GPU-check rehearsal, which checks steps and parsing: test_benchmarks.py).
INTERPRETED = {"NUMBA_DISABLE_JIT": "1"}
COMPILED = {"NUMBA_DISABLE_JIT": "0"}


def cli_env(env: dict | None = None, unset: tuple[str, ...] = ()) -> dict[str, str]:
    """This process's environment plus ``env``, less ``unset``; unbuffered so output arrives as it is printed;
    FFCV's pipelines interpreted unless ``env`` holds ``COMPILED``.

    The checkout is on ``PYTHONPATH`` (read only): configs name test classes as ``tests.spot_support.SlowSteps``,
    and the subprocess runs in a temporary directory, not in the checkout.
    """
    python_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": python_path, **INTERPRETED, **(env or {})}
    for name in unset:
        full_env.pop(name, None)
    return full_env


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None, unset: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``resnet-ffcv ARGS`` in a subprocess, as a user runs it; returns the CompletedProcess (text output).

    ``cwd`` defaults to the test's own working directory, a temporary one (conftest): never the checkout.
    """
    return subprocess.run(
        cli_command(*args),
        cwd=cwd,
        env=cli_env(env, unset),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,  # nothing may wait on a prompt
    )


def run_ddp_probe(probe: Path, data_dir: Path, out: Path) -> list[dict]:
    """Runs a 2-rank probe script (``probe data_dir out``), which writes ``out/rank<k>.json``; returns both records."""
    out.mkdir()
    result = subprocess.run(
        [sys.executable, str(probe), str(data_dir), str(out)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def load_checkpoint(path: Path | str) -> dict:
    """A whole Lightning checkpoint (loops, callbacks, optimizer: not only tensors, so ``weights_only=False``)."""
    return torch.load(path, map_location="cpu", weights_only=False)


def quiet_trainer(**overrides) -> L.Trainer:
    """A CPU Trainer that writes and prints nothing it is not asked to: no logger, checkpoints, progress bar,
    model summary or sanity check. ``overrides`` replace any of these."""
    return L.Trainer(
        **{
            "accelerator": "cpu",
            "devices": 1,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            **overrides,
        }
    )


def trained_checkpoint(path: Path, batch: int = 4, resolution: int = 32, **model_args) -> Path:
    """A real Lightning checkpoint of a ResNet-18 (10 classes unless ``num_classes``) after 3 SGD steps on
    synthetic batches.

    EMA decay 0.5, so after 3 steps the EMA weights clearly differ from the raw ones.
    """
    from resnet_ffcv.recipe.module import ImageClassifier
    from resnet_ffcv.tools.throughput import RepeatedBatches, synthetic_batch

    torch.manual_seed(0)
    module = ImageClassifier(
        **{"arch": "resnet18", "num_classes": 10, "lr": 0.05, "warmup_epochs": 0, "ema_decay": 0.5, **model_args}
    )
    trainer = quiet_trainer(max_steps=3)
    classes = module.hparams.num_classes
    trainer.fit(module, RepeatedBatches(synthetic_batch(batch, resolution, classes, torch.device("cpu")), 3))
    trainer.save_checkpoint(path)
    return path
