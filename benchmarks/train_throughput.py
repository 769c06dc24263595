"""Training images/s: our LightningModule through the Trainer vs the same step in a plain PyTorch loop.

Both run the same network, optimizer, mixing, EMA, precision, memory format, compile flag and gradient
clipping on the same synthetic batches already on the device, in one process, so the ratio isolates what
Lightning and our module's hooks add per step (the question of Lightning issue #14189, where a Lightning + FFCV
loop was 4x slower). The Trainer is set up as ``resnet-ffcv fit`` sets it up: progress bar on, a logger writing
every ``--log-every-n-steps`` steps (CSVLogger in a temporary folder, standing in for W&B), ``gradient_clip_val``.

    python benchmarks/train_throughput.py --cpu            # resnet18, 64 px, batch 16, 1 thread, 7 repeats
    python benchmarks/train_throughput.py --smoke          # seconds: checks that the benchmark runs
    python benchmarks/train_throughput.py                  # GPU: resnet50, 160/192/224 px, bf16, +/- compile

Each repeat runs the plain loop and then the Lightning loop (the order alternates between repeats) and
times steps ``warmup`` .. ``steps - 1``. The table gives the median images/s of each loop, the median and
range of the per-repeat time ratios Lightning / plain (adjacent runs see the same background load), and the
ratios of the median and of the 10th-percentile step times (per-step times are exact on the CPU; on a GPU,
without a sync per step, only the totals are). On a GPU it then counts the host<->device synchronizations
of a few Lightning steps. ``--json PATH`` also writes every measurement.

Compile cost: every run starts from an empty dynamo cache (``torch._dynamo.reset()``), so its first step builds
the training graph (forward and backward). The table's "first step - steady" column is the first step's time
minus the median timed step, per run (median over repeats, Lightning loop): with compile that is the compile
time of one training graph (plus the cuDNN autotuning the eager row also pays, shown in its own row). When both
rows exist for a resolution, a payoff line compares that cost with the step time saved over a 20-epoch stage of
ImageNet at this batch on 8 GPUs (configs/p4d_78pct.yaml); the validation graphs (raw and EMA, forward only) come
on top, about a third of a training graph each.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from itertools import pairwise

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger

from resnet_ffcv.recipe.module import ImageClassifier
from resnet_ffcv.tools.throughput import run_lightning_steps, synchronize, synthetic_batch

# Training FLOPs per image of ResNet-50 (about 3x the forward pass), for the fraction of the compute ceiling.
IMAGENET_TRAIN_IMAGES = 1_281_167
P4D_STAGE_EPOCHS, P4D_GPUS = 20, 8  # configs/p4d_78pct.yaml: three 20-epoch resolution stages on 8 GPUs
RESNET50_TRAIN_GFLOP = {224: 24.5, 192: 24.5 * (192 / 224) ** 2, 160: 12.5}
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense tensor-core peaks


@dataclass
class Timing:
    """One loop's run: seconds for the timed steps, each step's duration, and the first step's (compile)."""

    seconds: float
    step_seconds: list[float]
    first_step_seconds: float


@dataclass
class Row:
    arch: str
    resolution: int
    batch: int
    precision: str
    compile: bool
    timed_steps: int
    repeats: int
    plain_seconds: list[float] = field(default_factory=list)
    lightning_seconds: list[float] = field(default_factory=list)
    plain_images_per_s: float = 0.0
    lightning_images_per_s: float = 0.0
    ratio_median: float = 0.0  # median over repeats of lightning_seconds[i] / plain_seconds[i]
    ratio_min: float = 0.0
    ratio_max: float = 0.0
    step_ratio: float = 0.0  # median Lightning step time / median plain step time, over all repeats
    fast_step_ratio: float = 0.0  # the same for the 10th percentiles: the steps that other load hit least
    plain_step_seconds: list[float] = field(default_factory=list)
    lightning_step_seconds: list[float] = field(default_factory=list)
    fraction_of_peak: float | None = None
    plain_first_step_seconds: list[float] = field(default_factory=list)
    lightning_first_step_seconds: list[float] = field(default_factory=list)
    # median over repeats of (first step - median timed step), Lightning loop: with compile, one graph's compile
    first_step_excess_seconds: float = 0.0


def make_module(args, compile_: bool) -> ImageClassifier:
    """The recipe's module (mixing, EMA, BlurPool, label smoothing) at the benchmark's size.

    Compiled: from an empty dynamo cache, so each run pays (and times) its compile, and the runs of all
    repeats do not pile up in ``ResNet.forward``'s cache until its recompile limit stops the benchmark.
    """
    if compile_:
        torch._dynamo.reset()
    return ImageClassifier(
        arch=args.arch,
        num_classes=1000,
        lr=0.1,
        warmup_epochs=0,
        compile=compile_,
        compile_backend=args.compile_backend,
        channels_last=True,
    )


def as_fit_configures(args, log_dir: str) -> dict:
    """Trainer settings a real ``fit`` has and the bare timing Trainer lacks: progress bar, logger, clipping."""
    return {
        "logger": CSVLogger(log_dir),
        "log_every_n_steps": args.log_every_n_steps,
        "enable_progress_bar": True,
        "gradient_clip_val": args.gradient_clip_val,
    }


class FirstStepClock(L.Callback):
    """The first training step's wall time, CUDA synchronized at both ends: the compile lands here."""

    def __init__(self):
        self.start = self.seconds = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            synchronize(pl_module.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == 0:
            synchronize(pl_module.device)
            self.seconds = time.perf_counter() - self.start


def lightning_loop(args, resolution: int, compile_: bool, device: torch.device) -> Timing:
    module = make_module(args, compile_)
    batch = synthetic_batch(args.batch, resolution, 1000, device)
    first = FirstStepClock()
    with tempfile.TemporaryDirectory() as logs:
        clock = run_lightning_steps(
            module,
            batch,
            args.steps,
            args.warmup,
            args.precision,
            device,
            **as_fit_configures(args, logs),
            callbacks=[first],
        )
    return Timing(clock.seconds, clock.step_seconds, first.seconds)


def plain_loop(args, resolution: int, compile_: bool, device: torch.device) -> Timing:
    """The module's own pieces in a hand-written loop, doing what Lightning's automatic optimization does.

    Per step, as in the Trainer: the LR from the module's schedule at the fractional epoch (one epoch of
    ``steps`` batches), normalize + mix + forward + label-smoothed loss under the same autocast, zero_grad
    (set_to_none, Lightning's default), backward, gradient clipping by global norm when configured, SGD step,
    EMA update.
    """
    module = make_module(args, compile_).to(device)
    module.train()
    optimizer = module.configure_optimizers()
    images, labels = synthetic_batch(args.batch, resolution, 1000, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed")
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    marks: list[float] = []
    synchronize(device)
    first_step = time.perf_counter()
    for step in range(args.steps):
        if step == args.warmup:
            synchronize(device)
        if step >= args.warmup:
            marks.append(time.perf_counter())
        lr = module.lr_schedule.peak_lr(args.batch) * module.lr_schedule.schedule(step / args.steps, 1.0)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast:
            inputs, targets = module.mix(module.normalize(images), labels, 0)
            logits = module.network(inputs.contiguous(memory_format=module.memory_format))
            loss = F.cross_entropy(logits, targets, label_smoothing=module.hparams.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.gradient_clip_val:
            torch.nn.utils.clip_grad_norm_(parameters, args.gradient_clip_val)
        optimizer.step()
        if module.ema is not None:
            module.ema.update_parameters(module.network)
        if step == 0:  # the compile lands here
            synchronize(device)
            first_step = time.perf_counter() - first_step
    synchronize(device)
    marks.append(time.perf_counter())
    return Timing(marks[-1] - marks[0], [later - earlier for earlier, later in pairwise(marks)], first_step)


class SyncCounter(L.Callback):
    """Counts the host<->device synchronizations CUDA reports during the steps after ``warmup`` (GPU only).

    ``torch.cuda.set_sync_debug_mode("warn")`` makes every synchronizing call (``.item()``, a blocking copy,
    ``bool(tensor)``) emit a warning; a step that keeps the GPU fed has none.
    """

    def __init__(self, warmup: int):
        self.warmup = warmup

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            torch.cuda.set_sync_debug_mode("warn")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 == trainer.num_training_batches:
            torch.cuda.set_sync_debug_mode("default")


def count_syncs(args, resolution: int, device: torch.device) -> tuple[int, int, list[str]]:
    """(synchronizations, steps, distinct messages) of the Lightning loop, as fit runs it, after warmup."""
    steps, warmup = 12, 4
    module = make_module(args, compile_=False)
    batch = synthetic_batch(args.batch, resolution, 1000, device)
    with tempfile.TemporaryDirectory() as logs, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_lightning_steps(
            module,
            batch,
            steps,
            warmup,
            args.precision,
            device,
            **as_fit_configures(args, logs),
            callbacks=[SyncCounter(warmup)],
        )
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
    return len(syncs), steps - warmup, sorted(set(syncs))


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure(args, resolution: int, compile_: bool, device: torch.device, peak: float | None) -> Row:
    """Interleaved repeats of both loops (the order alternates) and their summary."""
    plain: list[Timing] = []
    lightning: list[Timing] = []
    for repeat in range(args.repeats):
        order = [("plain", plain_loop, plain), ("lightning", lightning_loop, lightning)]
        for name, loop, timings in order if repeat % 2 == 0 else order[::-1]:
            torch.manual_seed(0)
            timings.append(loop(args, resolution, compile_, device))
            print(
                f"  {resolution} px compile={compile_} repeat {repeat}: {name} {timings[-1].seconds:.3f} s", flush=True
            )
    timed = args.steps - args.warmup
    ratios = [light.seconds / base.seconds for light, base in zip(lightning, plain, strict=True)]
    row = Row(
        args.arch,
        resolution,
        args.batch,
        args.precision,
        compile_,
        timed,
        args.repeats,
        plain_seconds=[t.seconds for t in plain],
        lightning_seconds=[t.seconds for t in lightning],
        plain_images_per_s=timed * args.batch / statistics.median(t.seconds for t in plain),
        lightning_images_per_s=timed * args.batch / statistics.median(t.seconds for t in lightning),
        ratio_median=statistics.median(ratios),
        ratio_min=min(ratios),
        ratio_max=max(ratios),
        plain_step_seconds=[s for t in plain for s in t.step_seconds],
        lightning_step_seconds=[s for t in lightning for s in t.step_seconds],
        plain_first_step_seconds=[t.first_step_seconds for t in plain],
        lightning_first_step_seconds=[t.first_step_seconds for t in lightning],
        first_step_excess_seconds=statistics.median(
            t.first_step_seconds - statistics.median(t.step_seconds) for t in lightning
        ),
    )
    row.step_ratio = statistics.median(row.lightning_step_seconds) / statistics.median(row.plain_step_seconds)
    row.fast_step_ratio = percentile(row.lightning_step_seconds, 0.1) / percentile(row.plain_step_seconds, 0.1)
    if peak and args.arch == "resnet50":
        gflop = RESNET50_TRAIN_GFLOP.get(resolution, 24.5 * (resolution / 224) ** 2)
        row.fraction_of_peak = row.lightning_images_per_s * gflop / (peak * 1e3)
    return row


def run(args) -> list[Row]:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    torch.backends.cudnn.benchmark = True
    both = (device.type == "cuda" and not args.no_compile) or args.with_compile
    compile_flags = [False, True] if both else [False]
    if args.compile_only:
        compile_flags = [True]
    peak = peak_tflops(device)
    return [
        measure(args, resolution, compile_, device, peak)
        for resolution in args.resolutions
        for compile_ in compile_flags
    ]


def format_table(rows: list[Row], device_name: str) -> str:
    lines = [
        f"training throughput on {device_name} (synthetic on-device batches)",
        "| arch | res | batch | precision | compile | plain img/s | Lightning img/s | time ratio L/plain "
        "(median [min-max] of repeats) | step-time ratio median / p10 | of bf16 peak | first step - steady (s) |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        peak = f"{row.fraction_of_peak:.1%}" if row.fraction_of_peak else "-"
        lines.append(
            f"| {row.arch} | {row.resolution} | {row.batch} | {row.precision} | {row.compile} "
            f"| {row.plain_images_per_s:.1f} | {row.lightning_images_per_s:.1f} "
            f"| {row.ratio_median:.3f} [{row.ratio_min:.3f}-{row.ratio_max:.3f}] "
            f"| {row.step_ratio:.3f} / {row.fast_step_ratio:.3f} | {peak} | {row.first_step_excess_seconds:.1f} |"
        )
    if rows:
        row = rows[0]
        lines.append(f"{row.timed_steps} timed steps per run, {row.repeats} interleaved repeats per loop")
    lines += compile_payoff(rows)
    return "\n".join(lines)


def compile_payoff(rows: list[Row]) -> list[str]:
    """Per resolution with both rows: one training graph's compile time against the step time it saves over a
    20-epoch stage of ImageNet at this per-device batch on 8 GPUs (configs/p4d_78pct.yaml)."""
    lines = []
    for compiled in (row for row in rows if row.compile):
        eager = next((r for r in rows if not r.compile and r.resolution == compiled.resolution), None)
        if eager is None:
            continue
        compile_seconds = compiled.first_step_excess_seconds - eager.first_step_excess_seconds
        saved_per_step = eager.batch / eager.lightning_images_per_s - compiled.batch / compiled.lightning_images_per_s
        steps = IMAGENET_TRAIN_IMAGES * P4D_STAGE_EPOCHS // (compiled.batch * P4D_GPUS)
        net_minutes = (steps * saved_per_step - compile_seconds) / 60
        payback = f"after {compile_seconds / saved_per_step:,.0f} steps" if saved_per_step > 0 else "never"
        lines.append(
            f"compile at {compiled.resolution} px: {compile_seconds:.1f} s for the training graph (first-step excess "
            f"over the eager row), {saved_per_step * 1e3:+.1f} ms per step; pays back {payback}; net over a "
            f"{P4D_STAGE_EPOCHS}-epoch stage ({steps:,} steps per GPU): {net_minutes:+.1f} min"
        )
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="CPU mode: resnet18, 64 px, batch 16, 7 repeats")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run (resnet18, 32 px, 4 steps): runs?")
    parser.add_argument("--arch", default=None)
    parser.add_argument("--resolutions", type=int, nargs="+", default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="steps per loop, warmup included")
    parser.add_argument("--warmup", type=int, default=None, help="steps excluded from the timing")
    parser.add_argument("--precision", default=None, help="Trainer precision (bf16-mixed on GPU, 32-true on CPU)")
    parser.add_argument("--gradient-clip-val", type=float, default=1.0, help="as configs/p4d_78pct.yaml; 0: off")
    parser.add_argument("--log-every-n-steps", type=int, default=50, help="Trainer log_every_n_steps")
    compile_group = parser.add_mutually_exclusive_group()
    compile_group.add_argument("--no-compile", action="store_true", help="GPU: skip the torch.compile rows")
    compile_group.add_argument("--compile-only", action="store_true", help="only the torch.compile rows")
    compile_group.add_argument("--with-compile", action="store_true", help="CPU: also the torch.compile rows")
    parser.add_argument(
        "--compile-backend", default="inductor", help="torch.compile backend (aot_eager: a quick CPU check)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="interleaved runs of each loop")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (CPU mode default: 1, steady on a shared machine; the GPU modes keep torch's)",
    )
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.cpu = True
        defaults = {"arch": "resnet18", "resolutions": [32], "batch": 4, "steps": 4, "warmup": 1, "repeats": 1}
    elif args.cpu or not torch.cuda.is_available():
        args.cpu = True
        defaults = {"arch": "resnet18", "resolutions": [64], "batch": 16, "steps": 30, "warmup": 5, "repeats": 7}
    else:
        defaults = {"arch": "resnet50", "resolutions": [160, 192, 224], "batch": 256, "steps": 80, "warmup": 20}
        defaults |= {"precision": "bf16-mixed", "repeats": 3}
    defaults.setdefault("precision", "32-true")
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.threads is None and args.cpu:
        args.threads = 1
    if args.threads is not None:
        # On a CPU shared with other jobs, two OpenMP threads on two busy cores wait on each other at every
        # parallel region (steps became ~9x slower here); one thread measures the step, not the scheduler.
        torch.set_num_threads(args.threads)
    if not 0 <= args.warmup < args.steps:
        parser.error(f"--warmup {args.warmup}: expected 0 <= warmup < steps ({args.steps})")
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: expected >= 1")
    return args


def device_description(args) -> str:
    if not args.cpu:
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main(argv: list[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    rows = run(args)
    device_name = device_description(args)
    print("\n" + format_table(rows, device_name), flush=True)
    syncs = None
    if not args.cpu:
        count, steps, messages = count_syncs(args, args.resolutions[0], torch.device("cuda"))
        syncs = {"count": count, "steps": steps, "messages": messages}
        print(f"host<->device synchronizations in {steps} Lightning steps: {count}", *messages, sep="\n  ")
    if args.json:
        with open(args.json, "w") as handle:
            rows_json = [asdict(row) for row in rows]
            json.dump({"device": device_name, "rows": rows_json, "syncs": syncs}, handle, indent=1)
    return rows


if __name__ == "__main__":
    main()
