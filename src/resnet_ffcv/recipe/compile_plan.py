"""``torch.compile`` without surprises: which graphs a run compiles, known before it starts, and no eager fallback.

Dynamo keeps the compiled graphs of one code object (torchvision's ``ResNet.forward``, shared by the raw network
and the EMA copy) in one cache with one recompile limit (``torch._dynamo.config.recompile_limit``, 8 by
default); past it, a plain ``torch.compile`` runs that function eagerly for the rest of the run, with one
warning in a long log. Left to itself, a 3-stage schedule with EMA, flip TTA and a partial last validation
batch compiled ResNet's forward 7 times, one short of that limit, because dynamo also turned the resolution
into a symbolic shape and gave the last batch its own graph.

The strategy here makes every graph a deliberate one:

- ``dynamic=False``: one static graph per (weights, train/eval, batch, resolution). Static shapes give inductor
  fixed convolution shapes to tune for, and each resolution stage lasts many epochs, so a compile per stage is
  paid once; a symbolic resolution would save those compiles but add shape guards and slower kernels.
- The graphs of a fit are ``train`` at each distinct (resolution, batch) of the schedule (raw weights only: the
  EMA copy never trains) and ``eval`` at the validation (resolution, batch) for the raw weights and, with EMA,
  for the EMA copy: a separate graph, because its parameters do not require gradients (a guard) and under DDP
  its inputs are different tensors anyway. Flip TTA adds none: the flipped batch has the same shape and layout.
- A smaller batch than the epoch's first (the last validation batch: 50,000 / 8 ranks / 256 leaves 106) adds
  none either: at evaluation it is padded to the full batch and the padded rows' logits are dropped before any
  metric (exact: BatchNorm uses its running statistics in eval mode, so rows do not interact); in training
  (only with ``data.drop_last: false``) that one batch runs eagerly, since padding would change the BatchNorm
  batch statistics and the loss.
- ``fullgraph=True``: a graph break, or a recompile past the limit, is an error instead of a partly or wholly
  eager network (dynamo raises ``FailOnRecompileLimitHit`` for ``fullgraph``; the global
  ``fail_on_recompile_limit_hit`` flag does the same for every compiled function, so it is left alone).
- The limit is set to the planned count plus ``MARGIN`` for the fit and restored afterwards, and every compile
  is logged with its graph, whether it was planned, and its time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn
from torch._dynamo.exc import FailOnRecompileLimitHit
from torch._dynamo.utils import counters

CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]

# Extra graphs allowed past the plan before dynamo's recompile limit stops the run: one unplanned graph for the
# raw and one for the EMA weights (e.g. a test pass at another batch size in the same process). More than that
# is a shape leak (a new graph every few batches), which would otherwise cost a compile each time.
MARGIN = 2


@dataclass(frozen=True, order=True)
class Graph:
    """One compiled graph: which weights, train or eval, and the input batch and resolution (static shapes)."""

    weights: str  # "network" (raw) or "ema"
    training: bool
    batch: int
    resolution: int

    def __str__(self) -> str:
        mode = "train" if self.training else "eval"
        return f"{mode} {self.weights} {self.resolution} px x {self.batch}"


def planned_graphs(
    train_shapes: Iterable[tuple[int, int]],
    val_shape: tuple[int, int] | None,
    use_ema: bool,
) -> list[Graph]:
    """The graphs a fit compiles: ``train_shapes`` are the (resolution, per-device batch) of the epochs,
    ``val_shape`` the validation (resolution, batch) or None without validation.

    Flip TTA and a partial last batch add none (module docstring); the EMA copy adds one eval graph.
    """
    graphs = {Graph("network", True, batch, resolution) for resolution, batch in train_shapes}
    if val_shape is not None:
        resolution, batch = val_shape
        for weights in ["network", "ema"] if use_ema else ["network"]:
            graphs.add(Graph(weights, False, batch, resolution))
    return sorted(graphs, key=lambda g: (not g.training, g.resolution, g.batch, g.weights))


def describe_plan(graphs: list[Graph]) -> str:
    """One line: the count, the recompile limit and the graphs, for ``resnet-ffcv plan`` and the fit log."""
    return (
        f"torch.compile: {len(graphs)} graphs planned (recompile limit {len(graphs) + MARGIN}, "
        f"fullgraph, static shapes): {', '.join(map(str, graphs))}"
    )


def plan_for_fit(
    train_shape: Callable[[int], tuple[int, int]],
    max_epochs: int | None,
    val_shape: tuple[int, int] | None,
    use_ema: bool,
) -> list[Graph]:
    """The planned graphs of a fit of ``max_epochs`` whose epoch k trains at ``train_shape(k)`` (the datamodule's
    (resolution, per-device batch)); ``val_shape`` None: it never validates. Lightning's default max_epochs is
    1000 when neither limit is set; -1 (endless) plans that many too."""
    epochs = max_epochs if max_epochs and max_epochs > 0 else 1000
    return planned_graphs({train_shape(epoch) for epoch in range(epochs)}, val_shape, use_ema)


def plan_from_config(config, stages: Iterable) -> list[Graph]:
    """The planned graphs of a parsed ``fit`` config (``resnet-ffcv plan``): ``stages`` carry the
    ``resolution`` and per-device ``batch_size`` of each resolution stage."""
    data = config.data
    validates = config.trainer.limit_val_batches != 0
    val = (data.val_resolution, data.val_batch_size or data.batch_size) if validates else None
    return planned_graphs(((s.resolution, s.batch_size) for s in stages), val, bool(config.model.use_ema))


def _pad_rows(inputs: torch.Tensor, rows: int) -> torch.Tensor:
    """``inputs`` with zero rows appended up to ``rows``, in the same memory format (the graph guards strides)."""
    channels_last = inputs.dim() == 4 and inputs.is_contiguous(memory_format=torch.channels_last)
    padded = F.pad(inputs, (0, 0) * (inputs.dim() - 1) + (0, rows - inputs.shape[0]))
    return padded.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class CompiledNetworks:
    """Compiles networks in place and runs every forward pass through ``__call__``, which keeps the batch size
    static, logs each new graph and turns a recompile-limit failure into a clear error.

    Args:
        mode: inductor's compile mode (``model.compile_mode``).
        backend: ``torch.compile`` backend; tests use ``aot_eager`` (the same dynamo guards and recompiles,
            seconds instead of minutes per graph).
    """

    def __init__(self, mode: CompileMode = "default", backend: str = "inductor"):
        self.mode, self.backend = mode, backend
        self.plan: list[Graph] | None = None
        self.compiled: list[tuple[Graph, float]] = []  # in compile order, with the first call's seconds
        self._full_batch: dict[bool, int] = {}  # by training flag: the batch of the epoch's first call
        self._saved_limit: int | None = None

    def compile(self, network: nn.Module) -> None:
        """``Module.compile`` in place: the state-dict keys stay those of the plain network."""
        mode = self.mode if self.backend == "inductor" else None  # modes are inductor's
        network.compile(backend=self.backend, mode=mode, dynamic=False, fullgraph=True)

    # -- the plan and the limit ---------------------------------------------------------------------------------
    def set_plan(self, plan: list[Graph] | None) -> None:
        """Remember the plan and set dynamo's recompile limit to its size plus ``MARGIN`` (until ``restore``)."""
        self.plan = plan
        if plan is None:
            return
        if self._saved_limit is None:
            self._saved_limit = torch._dynamo.config.recompile_limit
        torch._dynamo.config.recompile_limit = len(plan) + MARGIN
        rank_zero_info(describe_plan(plan))

    def restore(self) -> None:
        if self._saved_limit is not None:
            torch._dynamo.config.recompile_limit = self._saved_limit
            self._saved_limit = None

    def start_epoch(self, training: bool) -> None:
        """The next call sets the full batch of this epoch (a resolution stage may change the batch size)."""
        self._full_batch.pop(training, None)

    # -- the calls ----------------------------------------------------------------------------------------------
    def __call__(self, network: nn.Module, weights: str, inputs: torch.Tensor) -> torch.Tensor:
        """``network(inputs)`` through the static graph of this epoch's full batch size."""
        training, rows = network.training, inputs.shape[0]
        full = self._full_batch.setdefault(training, rows)
        if rows < full and training:
            with torch.compiler.set_stance("force_eager"):  # padding would change BatchNorm statistics
                return network(inputs)
        if rows < full:
            inputs = _pad_rows(inputs, full)
        graph = Graph(weights, training, inputs.shape[0], inputs.shape[-1])
        graphs_before = counters["stats"]["unique_graphs"]
        start = time.perf_counter()
        try:
            outputs = network(inputs)
        except FailOnRecompileLimitHit as error:
            raise RuntimeError(self._limit_message(graph)) from error
        if counters["stats"]["unique_graphs"] != graphs_before:
            self._record(graph, time.perf_counter() - start)
        return outputs[:rows]

    def _record(self, graph: Graph, seconds: float) -> None:
        self.compiled.append((graph, seconds))
        planned = self.plan is not None and graph in self.plan
        if self.plan is None:
            count, status = f"{len(self.compiled)}", "no plan: loaders other than ours"
        else:
            count, status = f"{len(self.compiled)}/{len(self.plan)}", "planned" if planned else "UNPLANNED"
        line = f"torch.compile graph {count}: {graph} ({status}), first call {seconds:.1f} s with the compile"
        if planned or self.plan is None:
            rank_zero_info(line)
        else:
            rank_zero_warn(f"{line}; each unplanned graph costs a compile. {describe_plan(self.plan)}")

    def _limit_message(self, graph: Graph) -> str:
        planned = describe_plan(self.plan) if self.plan is not None else "no plan (loaders other than ours)"
        seen = ", ".join(str(g) for g, _ in self.compiled) or "none"
        return (
            f"torch.compile: the network needed another graph ({graph}) past dynamo's recompile limit "
            f"({torch._dynamo.config.recompile_limit}); the run stops here instead of continuing eagerly and "
            f"slower without saying so. {planned}. Compiled in this process: {seen}. A batch size or resolution "
            "that changes during the run makes a new graph each time: keep them fixed per resolution stage, or "
            "set model.compile: false."
        )
