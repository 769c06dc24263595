"""torch.compile without surprises: the planned graphs and no others, and never a silent eager fallback.

The compiles are real dynamo compiles with the ``aot_eager`` backend: dynamo's guards, recompiles and limit are
the same whatever the backend, and a ResNet-18 graph takes seconds instead of minutes to build.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from resnet_ffcv.data.datamodule import FFCVDataModule
from resnet_ffcv.data.resolution import ResolutionSchedule, Stage
from resnet_ffcv.lightning_cli import parse_config_only
from resnet_ffcv.recipe.compile_plan import MARGIN, CompiledNetworks, Graph, plan_from_config, planned_graphs
from resnet_ffcv.recipe.module import ImageClassifier
from resnet_ffcv.tools.plan import group_stages, train_shape_of

from .helpers import CONFIGS, quiet_trainer

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # see test_data.py


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Compiled graphs live on the code object (``ResNet.forward``), shared by every test in the process."""
    torch._dynamo.reset()
    limit = torch._dynamo.config.recompile_limit
    yield
    torch._dynamo.reset()
    torch._dynamo.config.recompile_limit = limit


def unique_graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_p4d_config_plans_five_graphs():
    """3 training resolutions + validation at 256 (FFCV's protocol) for the raw and the EMA weights; TTA and the
    last batch: none."""
    config = parse_config_only(["--config", str(CONFIGS / "p4d_78pct.yaml")])
    stages = group_stages(int(config.trainer.max_epochs), train_shape_of(config))
    assert config.model.compile and config.model.compile_mode == "default"
    assert plan_from_config(config, stages) == [
        Graph("network", True, 256, 160),
        Graph("network", True, 256, 192),
        Graph("network", True, 256, 224),
        Graph("ema", False, 256, 256),
        Graph("network", False, 256, 256),
    ]
    # A stage with its own batch size is its own graph; without EMA or validation there are fewer.
    assert len(planned_graphs([(160, 256), (160, 256), (224, 128)], (224, 256), use_ema=True)) == 4
    assert len(planned_graphs([(160, 256)], None, use_ema=True)) == 1


class Recorder(L.Callback):
    """The recompile limit while training, and the samples each validation counted."""

    def __init__(self):
        self.limits: list[int] = []
        self.val_samples: list[int] = []
        self._samples = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.limits.append(torch._dynamo.config.recompile_limit)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._samples = 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._samples += batch[1].shape[0]

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.val_samples.append(self._samples)


@pytest.mark.slow
def test_p4d_shaped_schedule_compiles_exactly_the_plan(ffcv_dir, caplog):
    """The p4d schedule scaled down: 32 -> 48 -> 64 px, EMA, flip TTA, validation at 64 px in batches of 16 of
    40 images (16, 16 and a partial 8), through a real Trainer and the FFCV datamodule."""
    torch.manual_seed(0)
    model = ImageClassifier(
        arch="resnet18",
        num_classes=10,
        lr=0.05,
        warmup_epochs=0,
        use_ema=True,
        val_flip_tta=True,
        compile=True,
        compile_backend="aot_eager",
    )
    schedule = ResolutionSchedule(stages=[Stage(0, 32), Stage(2, 48), Stage(4, 64)])
    data = FFCVDataModule(
        data_dir=str(ffcv_dir),
        batch_size=16,
        val_batch_size=16,
        train_resolution=32,
        val_resolution=64,
        num_workers=2,
        resolution=schedule,
    )
    recorder = Recorder()
    caplog.set_level("INFO")
    limit_before = torch._dynamo.config.recompile_limit
    before = unique_graphs()
    trainer = quiet_trainer(max_epochs=6, limit_train_batches=2, callbacks=[recorder])
    trainer.fit(model, data)

    plan = [
        Graph("network", True, 16, 32),
        Graph("network", True, 16, 48),
        Graph("network", True, 16, 64),
        Graph("ema", False, 16, 64),
        Graph("network", False, 16, 64),
    ]
    compiled = model._compiled
    assert compiled.plan == plan
    assert unique_graphs() - before == len(plan)  # dynamo's own count: no graph outside the plan
    assert sorted(graph for graph, _ in compiled.compiled) == sorted(plan)
    # The guard: the limit was planned + margin during the fit (past it dynamo raises: fullgraph), then restored.
    assert recorder.limits == [len(plan) + MARGIN] * 6
    assert torch._dynamo.config.recompile_limit == limit_before
    assert recorder.val_samples == [40] * 6  # the partial batch ran, padded to 16, on the same graph
    log = caplog.text  # Lightning's rank-zero log, and dynamo's own warnings
    assert "torch.compile: 5 graphs planned (recompile limit 7" in log
    assert "torch.compile graph 3/5: eval ema 64 px x 16 (planned)" in log and "UNPLANNED" not in log
    assert "recompile_limit" not in log  # dynamo's warning when it gives up and runs eagerly

    # Padding is exact: 5 images (a partial batch) through the compiled, padded path give the eager logits.
    images = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    model.eval()
    with torch.no_grad():
        inputs = model.normalize(images)
        padded = model._logits(model.ema.module, inputs)
        flipped = inputs.flip(3).contiguous(memory_format=torch.channels_last)
        with torch.compiler.set_stance("force_eager"):
            eager = model.ema.module(inputs) + model.ema.module(flipped)
    assert padded.shape == (5, 10)
    torch.testing.assert_close(padded, eager)
    assert unique_graphs() - before == len(plan)


class Tiny(nn.Module):
    """A convolution, BatchNorm and a classifier: seconds to compile, the same dynamo machinery."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


def test_short_batches_reuse_the_graph_and_the_limit_stops_the_run():
    torch.manual_seed(0)
    network = Tiny()
    calls = CompiledNetworks(backend="aot_eager")
    calls.compile(network)
    calls.set_plan([Graph("network", False, 4, 8)])  # limit: 1 + MARGIN
    network.eval()
    batch = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        calls(network, "network", batch)
        short = calls(network, "network", batch[:3])  # padded to 4: no new graph, the same logits
        torch.testing.assert_close(short, calls(network, "network", batch)[:3])
        network.train()  # a short training batch runs eagerly
        calls.start_epoch(training=True)
        calls(network, "network", batch)
        calls(network, "network", batch[:2])
        network.eval()
        assert [graph for graph, _ in calls.compiled] == [Graph("network", False, 4, 8), Graph("network", True, 4, 8)]
        # One more (unplanned) resolution fits in the margin; the next is an error, not an eager fallback.
        calls(network, "network", torch.randn(4, 3, 12, 12))
        with pytest.raises(RuntimeError, match=r"another graph \(eval network 16 px x 4\) past dynamo's recompile"):
            calls(network, "network", torch.randn(4, 3, 16, 16))
    calls.restore()
