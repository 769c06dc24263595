"""``resnet-ffcv plan --config ...``: how long and how much, measured on this hardware before a paid run.

Runs a short burst of the real training step (our LightningModule through a real Trainer, on synthetic
on-device batches) at each resolution stage of the config, and of the real FFCV train loader when the data is
present; then projects epoch times, the total to ``trainer.max_epochs`` and the cost at the configured price.

    resnet-ffcv plan --config configs/p4d_78pct.yaml [--steps 30 --warmup 10 --json plan.json] [fit overrides]

Assumptions, printed with the table: throughput scales linearly over all GPUs of the config
(``--scaling_efficiency`` to change that), validation time is not counted, and a stage is as fast as the slower
of compute and loader.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from resnet_ffcv.callbacks.watchdog import describe_run_safety
from resnet_ffcv.lightning_cli import parse_config_only, parse_tool_args
from resnet_ffcv.tools import disk_speed
from resnet_ffcv.tools.memory_fit import random_order_warning

IMAGENET_TRAIN_IMAGES = 1_281_167
# A CPU measures the step to check the config and the recipe's overheads, not GPU speed: a ResNet-50 step at
# batch 256 takes minutes there, so the CPU measures at this batch unless --batch says otherwise.
CPU_BATCH = 4
# Steps (timed + warmup) and loader batches per stage by default: a GPU needs warmup (cudnn autotune, compile) and
# enough steps for a steady rate; a CPU step is seconds long and steady from the second one on, so the default
# there stays near a minute for ResNet-50's three stages.
GPU_STEPS, GPU_WARMUP, GPU_LOADER_BATCHES = 30, 10, 50
CPU_STEPS, CPU_WARMUP, CPU_LOADER_BATCHES = 3, 1, 10


@dataclass
class Stage:
    """Consecutive epochs that train at one resolution and per-device batch size."""

    first_epoch: int
    epochs: int
    resolution: int
    batch_size: int


@dataclass
class StageProjection:
    stage: Stage
    step_images_per_s: float  # one device, measured
    loader_images_per_s: float | None  # one rank's loader, measured; None without data
    cluster_images_per_s: float
    loader_bound: bool
    epoch_seconds: float
    stage_seconds: float


@dataclass
class Plan:
    stages: list[StageProjection]
    devices: int
    train_images: int
    price_per_hour: float
    scaling_efficiency: float
    on_cpu: bool = False  # measured without a GPU: times are this CPU's, and no cost is projected from them
    disk_extra_seconds: float = 0.0  # epochs that wait on reading train.ffcv from disk (disk_speed.py)
    validation_seconds: float = 0.0  # every validation of the run (estimated: see validation_estimate)

    @property
    def total_seconds(self) -> float:
        return sum(stage.stage_seconds for stage in self.stages) + self.disk_extra_seconds + self.validation_seconds

    @property
    def total_cost(self) -> float | None:
        """Dollars at the configured price; None from a CPU's speed (it says nothing of the GPUs' time)."""
        return None if self.on_cpu else self.total_seconds / 3600 * self.price_per_hour


def group_stages(max_epochs: int, train_shape: Callable[[int], tuple[int, int]]) -> list[Stage]:
    """Epochs 0..max_epochs-1 grouped into runs of the same (resolution, per-device batch size)."""
    stages: list[Stage] = []
    for epoch in range(max_epochs):
        resolution, batch = train_shape(epoch)
        if stages and (stages[-1].resolution, stages[-1].batch_size) == (resolution, batch):
            stages[-1].epochs += 1
        else:
            stages.append(Stage(epoch, 1, resolution, batch))
    return stages


def project_stage(
    stage: Stage,
    step_images_per_s: float,
    loader_images_per_s: float | None,
    devices: int,
    train_images: int,
    scaling_efficiency: float = 1.0,
) -> StageProjection:
    """images/s of one device (and one rank's loader) -> cluster images/s -> epoch and stage seconds."""
    compute = step_images_per_s * devices * scaling_efficiency
    loader = None if loader_images_per_s is None else loader_images_per_s * devices
    cluster = compute if loader is None else min(compute, loader)
    epoch_seconds = train_images / cluster
    return StageProjection(
        stage=stage,
        step_images_per_s=step_images_per_s,
        loader_images_per_s=loader_images_per_s,
        cluster_images_per_s=cluster,
        loader_bound=loader is not None and loader < compute,
        epoch_seconds=epoch_seconds,
        stage_seconds=epoch_seconds * stage.epochs,
    )


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 5 * 3600 else f"{seconds / 3600:.1f} h"


def format_plan(plan: Plan, hardware: str, notes: list[str]) -> str:
    lines = [
        *(
            ["CPU FIGURES: no GPU here; every time below is this CPU's, not a GPU's, and no cost is projected"]
            if plan.on_cpu
            else []
        ),
        f"measured on {hardware}; projected for {plan.devices} device(s), {plan.train_images:,} training images",
        f"{'epochs':>9} {'res':>4} {'batch/dev':>9} {'img/s/dev':>10} {'loader/rank':>11} {'cluster img/s':>13} "
        f"{'epoch':>10} {'stage':>10}  bound",
    ]
    for row in plan.stages:
        stage = row.stage
        epochs = f"{stage.first_epoch + 1}-{stage.first_epoch + stage.epochs}"  # counted from 1, as fit counts
        loader = f"{row.loader_images_per_s:.0f}" if row.loader_images_per_s is not None else "-"
        lines.append(
            f"{epochs:>9} {stage.resolution:>4} {stage.batch_size:>9} {row.step_images_per_s:>10.1f} {loader:>11} "
            f"{row.cluster_images_per_s:>13.0f} {_minutes(row.epoch_seconds):>10} {_minutes(row.stage_seconds):>10}"
            f"  {'LOADER' if row.loader_bound else 'compute'}"
        )
    to_epoch = f"total: {_minutes(plan.total_seconds)} to epoch {sum(r.stage.epochs for r in plan.stages)}"
    if plan.total_cost is None:
        lines.append(
            f"{to_epoch} at CPU speed; no cost: run `resnet-ffcv plan` on the GPU machine for its time and cost "
            f"(${plan.price_per_hour:.2f}/h)"
        )
    else:
        lines.append(f"{to_epoch}, ${plan.total_cost:.2f} at ${plan.price_per_hour:.2f}/h")
    lines += [f"note: {note}" for note in notes]
    return "\n".join(lines)


# -- measuring ----------------------------------------------------------------------------------------------------
def _measure_step(
    config, resolution: int, batch: int, steps: int, warmup: int, device, precision: str, compile_on_cpu: bool = False
) -> tuple[float, float | None]:
    """Images/s per device at steady state, and the compile seconds of this stage's training graph (the first step
    minus a steady one; None where compile is off, as on the CPU)."""
    from resnet_ffcv.dataset.format import CLASSES_FILE, load_classes
    from resnet_ffcv.recipe.module import ImageClassifier
    from resnet_ffcv.tools.throughput import run_lightning_steps, synthetic_batch

    model_args = {key: value for key, value in vars(config.model).items() if not key.startswith("_")}
    classes = Path(config.data.data_dir) / CLASSES_FILE
    model_args["num_classes"] = config.data.num_classes or (len(load_classes(classes)) if classes.is_file() else 1000)
    if device.type == "cpu" and not compile_on_cpu:
        model_args["compile"] = False  # minutes of compiling for a CPU estimate: see the note
    module = ImageClassifier(**model_args)
    clock = run_lightning_steps(
        module, synthetic_batch(batch, resolution, module.hparams.num_classes, device), steps, warmup, precision, device
    )
    steady_step = clock.seconds / (steps - warmup)
    compile_seconds = max(0.0, clock.first_step_seconds - steady_step) if model_args["compile"] else None
    return (steps - warmup) * batch / clock.seconds, compile_seconds


def _measure_loader(config, resolution: int, batch: int, batches: int, devices_per_node: int) -> float | None:
    """One rank's share of the node's cores decoding ``train.ffcv`` at ``resolution``; None without data."""
    from resnet_ffcv.data.datamodule import FFCVDataModule
    from resnet_ffcv.data.loading import cores_per_rank

    data_args = {key: value for key, value in vars(config.data).items() if not key.startswith("_")}
    if not (Path(data_args["data_dir"]) / data_args.get("train_file", "train.ffcv")).is_file():
        return None
    data_args.update(batch_size=batch, num_workers=data_args.get("num_workers") or cores_per_rank(devices_per_node))
    datamodule = FFCVDataModule(**data_args)
    datamodule.set_train_resolution(resolution)
    loader = datamodule.train_dataloader()
    iterator, seen, start = iter(loader), 0, 0.0
    for index, (images, _) in enumerate(iterator):
        if index == 1:  # the first batch pays for the pipeline's compilation
            start = time.perf_counter()
        elif index > 1:
            seen += images.shape[0]
        if index == batches:
            break
    elapsed = time.perf_counter() - start
    del iterator
    return seen / elapsed if seen else None


def train_shape_of(config) -> Callable[[int], tuple[int, int]]:
    """Epoch -> (resolution, per-device batch) of the config, as the datamodule will serve them."""
    from resnet_ffcv.data.resolution import ResolutionSchedule

    settings = {key: value for key, value in vars(config.resolution).items() if not key.startswith("_")}
    schedule, data = ResolutionSchedule(**settings), config.data
    return lambda epoch: schedule.train_shape(epoch, data.train_resolution, data.batch_size)


def _price_of(config, override: float | None) -> float:
    if override is not None:
        return override
    return float(config.cost.price_per_hour)


def _devices(config) -> tuple[int, int]:
    """(devices per node, nodes) as the config asks for them."""
    devices = config.trainer.devices
    if isinstance(devices, (list, tuple)):
        devices = len(devices)
    elif devices in ("auto", -1, "-1", None):
        devices = max(1, torch.cuda.device_count())
    return int(devices), int(config.trainer.num_nodes or 1)


def _parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """plan's own options, and the rest: the training config and overrides, as for ``fit``."""
    parser = argparse.ArgumentParser(prog="resnet-ffcv plan", add_help=False, allow_abbrev=False)
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"training steps measured per stage, warmup included (default {GPU_STEPS} on a GPU, {CPU_STEPS} on a CPU)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help=f"steps not timed: cudnn autotune, compile (default {GPU_WARMUP} on a GPU, {CPU_WARMUP} on a CPU)",
    )
    parser.add_argument(
        "--loader_batches",
        type=int,
        default=None,
        help=f"loader batches timed per stage (default {GPU_LOADER_BATCHES} on a GPU, {CPU_LOADER_BATCHES} on a CPU)",
    )
    parser.add_argument("--batch", type=int, default=None, help="measure at this per-device batch instead")
    parser.add_argument("--train_images", type=int, default=None, help="default: train.ffcv's count, else ImageNet")
    parser.add_argument("--price_per_hour", type=float, default=None, help="default: the config's cost.price_per_hour")
    parser.add_argument("--scaling_efficiency", type=float, default=1.0, help="multi-GPU efficiency (1: linear)")
    parser.add_argument("--json", default=None, help="also write the plan here")
    parser.add_argument(
        "--compile_on_cpu",
        action="store_true",
        help="keep model.compile on a CPU too (ResNet-50 with inductor takes minutes per graph here; "
        "--model.compile_backend aot_eager makes the same graphs in seconds)",
    )
    return parse_tool_args(parser, argv, (__doc__ or "").split("\n\n", 1)[-1].strip())


def _val_images(config) -> int:
    """val.ffcv's count where the file is here, else ImageNet's validation set."""
    path = Path(config.data.data_dir) / config.data.val_file
    if not path.is_file():
        return IMAGENET_VAL_IMAGES
    from ffcv.reader import Reader

    return int(Reader(str(path)).num_samples)


def _train_images(given: int | None, train_path: Path, notes: list[str]) -> int:
    """The training set's size: as given, else counted in train.ffcv, else ImageNet's (said in the notes)."""
    if given is not None:
        return given
    if train_path.is_file():
        from ffcv.reader import Reader

        return int(Reader(str(train_path)).num_samples)
    notes.append(f"{train_path} not found: ImageNet's {IMAGENET_TRAIN_IMAGES:,} images, synthetic batches only")
    return IMAGENET_TRAIN_IMAGES


# A validation pass is a forward pass only: about a third of a training step's work per pixel (forward + backward
# ~ 3 forwards), so its rate is estimated from the measured training rate rather than measured (a second model run).
FORWARD_SHARE_OF_STEP = 1 / 3
IMAGENET_VAL_IMAGES = 50_000


def validation_estimate(config, stages: list[StageProjection], devices: int, val_images: int) -> tuple[float, str]:
    """Seconds of all the run's validations, and a note: which epochs validate (check_val_every_n_epoch and
    model.val_last_epochs), passes per image (raw/EMA weights x flip TTA), at the last stage's measured rate."""
    from resnet_ffcv.recipe.evaluation import eval_suffixes
    from resnet_ffcv.recipe.validation_schedule import validates

    model, trainer, last = config.model, config.trainer, stages[-1]
    max_epochs = int(trainer.max_epochs)
    every = trainer.check_val_every_n_epoch
    epochs = sum(validates(e, max_epochs, every, model.val_last_epochs) for e in range(max_epochs))
    passes = len(eval_suffixes(model.use_ema, model.val_weights)) * (2 if model.val_flip_tta else 1)
    pixels = (config.data.val_resolution / last.stage.resolution) ** 2  # per image, relative to training
    rate = last.step_images_per_s / FORWARD_SHARE_OF_STEP / pixels * devices  # images/s, all devices
    per_validation = val_images * passes / rate
    seconds = per_validation * epochs
    train = sum(stage.stage_seconds for stage in stages)
    note = (
        f"validation: {epochs} of {max_epochs} epochs x {per_validation:.0f} s ({passes} passes of {val_images:,} "
        f"images at {config.data.val_resolution} px) = {_minutes(seconds)}, {seconds / (train + seconds):.1%} of "
        "the run (estimated: a forward pass = 1/3 of a training step per pixel, at the last stage's measured rate)"
    )
    return seconds, note


def _compile_notes(config, stages: list[Stage], compiles: list[float]) -> list[str]:
    """The planned graph count, and the measured compile time per training graph where compile ran."""
    if not config.model.compile:
        return []
    from resnet_ffcv.recipe.compile_plan import describe_plan, plan_from_config

    graphs = plan_from_config(config, stages)
    notes = [f"{describe_plan(graphs)}; each compiles once, at its first step"]
    if compiles:
        per_graph = sum(compiles) / len(compiles)
        notes.append(
            f"torch.compile measured here: {per_graph:.0f} s per training graph (first step minus a steady one), "
            f"about {per_graph * len(graphs) / 60:.1f} min for the {len(graphs)} graphs (eval graphs compile faster)"
        )
    else:
        notes.append("torch.compile time per graph not measured: compile is off on the CPU (--compile_on_cpu)")
    return notes


def _hardware(own: argparse.Namespace, config, device: torch.device, notes: list[str]) -> tuple[str, str]:
    """The hardware's name and the precision measured; fills in the defaults of a CPU or a GPU and says so."""
    precision = str(config.trainer.precision)
    on_cpu = device.type == "cpu"
    own.steps = own.steps if own.steps is not None else CPU_STEPS if on_cpu else GPU_STEPS
    own.warmup = own.warmup if own.warmup is not None else min(own.steps - 1, CPU_WARMUP if on_cpu else GPU_WARMUP)
    own.loader_batches = own.loader_batches or (CPU_LOADER_BATCHES if on_cpu else GPU_LOADER_BATCHES)
    if not on_cpu:
        if own.batch is not None:
            notes.append(f"measured at batch {own.batch} per device instead of each stage's batch")
        return torch.cuda.get_device_name(device), precision
    say(
        "no GPU on this machine: measuring on the CPU. The figures are CPU figures, not GPU ones (run plan on the "
        "GPU machine for those), and no cost is projected from them."
    )
    if precision != "32-true":
        notes.append(f"precision {precision} measured as 32-true on the CPU")
        precision = "32-true"
    if config.model.compile and not own.compile_on_cpu:
        notes.append("model.compile measured eagerly on the CPU (--compile_on_cpu to compile here)")
    if own.batch is None:
        own.batch = CPU_BATCH
        notes.append(f"measured at batch {CPU_BATCH} per device on the CPU (--batch to change), not the stages' batch")
    else:
        notes.append(f"measured at batch {own.batch} per device instead of each stage's batch")
    return f"CPU ({os.cpu_count()} cores): GPU figures need a GPU machine", precision


def _measure_stages(own, config, stages: list[Stage], device, precision: str, devices: tuple[int, int], images: int):
    """Each stage's projection, with progress (and the time left) on stderr; and the compile seconds measured."""
    projections, compiles, started = [], [], time.monotonic()
    devices_per_node, nodes = devices
    for number, stage in enumerate(stages, 1):
        batch = own.batch or stage.batch_size
        where = f"stage {number}/{len(stages)}"
        say(
            f"{where} (epochs {stage.first_epoch + 1}-{stage.first_epoch + stage.epochs}, {stage.resolution} px): "
            f"timing {own.steps} training steps at batch {batch} on {device.type} ..."
        )
        step, compile_seconds = _measure_step(
            config, stage.resolution, batch, own.steps, own.warmup, device, precision, own.compile_on_cpu
        )
        if compile_seconds is not None:
            compiles.append(compile_seconds)
            say(f"{where}: torch.compile of its training graph took {compile_seconds:.0f} s")
        loader = _measure_loader(config, stage.resolution, batch, own.loader_batches, devices_per_node)
        elapsed = time.monotonic() - started
        left = elapsed / number * (len(stages) - number)
        say(
            f"{where}: {step:.1f} images/s per device"
            + (f", loader {loader:.0f} images/s per rank" if loader is not None else "")
            + f" ({elapsed:.0f} s so far{f', about {left:.0f} s left' if left else ''})"
        )
        projections.append(project_stage(stage, step, loader, devices_per_node * nodes, images, own.scaling_efficiency))
    return projections, compiles


def make_plan(argv: list[str]) -> tuple[Plan, list[str], str]:
    own, fit_args = _parse_args(argv)
    config = parse_config_only(fit_args)
    devices_per_node, nodes = _devices(config)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    notes = [f"throughput assumed to scale x{own.scaling_efficiency:g} linearly over {devices_per_node * nodes} GPUs"]
    hardware, precision = _hardware(own, config, device, notes)
    stages = group_stages(int(config.trainer.max_epochs), train_shape_of(config))
    train_path = Path(config.data.data_dir) / config.data.train_file
    train_images = _train_images(own.train_images, train_path, notes)
    projections, compiles = _measure_stages(
        own, config, stages, device, precision, (devices_per_node, nodes), train_images
    )
    notes += _compile_notes(config, stages, compiles)
    disk_extra, disk_note = disk_speed.extra_seconds(
        train_path, [row.epoch_seconds for row in projections for _ in range(row.stage.epochs)]
    )
    notes += [disk_note] if disk_note else []
    order_warning = random_order_warning(config.data.order, train_path, config.cost.instance_type)
    notes += [f"WARNING: {order_warning}"] if order_warning else []
    validation, validation_note = validation_estimate(
        config, projections, devices_per_node * nodes, _val_images(config)
    )
    notes.append(validation_note)
    notes.append(describe_run_safety(config, devices_per_node * nodes, _price_of(config, own.price_per_hour)))
    plan = Plan(
        projections,
        devices_per_node * nodes,
        train_images,
        _price_of(config, own.price_per_hour),
        own.scaling_efficiency,
        on_cpu=device.type == "cpu",
        disk_extra_seconds=disk_extra,
        validation_seconds=validation,
    )
    if own.json:
        summary = {"hardware": hardware, "notes": notes, "total_seconds": plan.total_seconds}
        Path(own.json).write_text(json.dumps({**summary, "total_cost_usd": plan.total_cost, **asdict(plan)}, indent=1))
    return plan, notes, hardware


def say(message: str) -> None:
    """Progress on stderr, as it happens (stdout keeps the table alone)."""
    print(f"plan: {message}", file=sys.stderr, flush=True)


def _stop(signum: int, frame) -> None:
    # Lightning's own SIGTERM handler (which calls this one too) only asks the loop to stop after the current
    # step; raising here ends the measurement at the next Python bytecode, between two operators.
    raise SystemExit(f"resnet-ffcv plan: stopped by signal {signal.Signals(signum).name}; nothing written")


def plan_command(argv: list[str]) -> None:
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        plan, notes, hardware = make_plan(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(format_plan(plan, hardware, notes))
