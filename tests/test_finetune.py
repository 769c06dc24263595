"""Fine-tuning: ``model.init_weights`` from an exported 7-class network into the 10-class data, a frozen backbone."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from resnet_ffcv.errors import InvalidValue
from resnet_ffcv.recipe.module import ImageClassifier
from resnet_ffcv.tools.export import export
from resnet_ffcv.tools.throughput import RepeatedBatches, synthetic_batch

from .helpers import CONFIGS, load_checkpoint, quiet_trainer, run_cli, trained_checkpoint

TINY = [
    "--trainer.max_epochs=1",
    "--trainer.max_steps=2",
    "--trainer.limit_val_batches=1",
    "--trainer.logger=false",
    "--data.batch_size=8",
    "--data.num_workers=1",
    "--data.train_resolution=32",
    "--resolution.stages=null",
    "--data.val_resolution=32",
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, torch.Tensor]:
    """A 7-class ResNet-18 trained with BlurPool, exported with the blur dropped (torchvision's layout)."""
    folder = tmp_path_factory.mktemp("finetune")
    checkpoint = trained_checkpoint(folder / "seven.ckpt", num_classes=7, blurpool=True)
    path = export(str(checkpoint), str(folder / "seven.pt"), blurpool="drop")
    return {"path": str(path), **torch.load(path, weights_only=True)}


def backbone(state: dict[str, torch.Tensor], prefix: str = "network.") -> dict[str, torch.Tensor]:
    """The backbone's convolution weights, in torchvision's names (BlurPool's ``.conv`` removed)."""
    return {
        key[len(prefix) :].replace(".conv.weight", ".weight"): value
        for key, value in state.items()
        if key.startswith(prefix) and key.endswith("weight") and value.dim() == 4
    }


def test_construction_loads_the_backbone_into_network_and_ema_with_a_new_head(exported, caplog):
    for blurpool in (True, False):  # the export has no blur: it fits a network with or without one
        module = ImageClassifier(arch="resnet18", num_classes=10, blurpool=blurpool, init_weights=exported["path"])
        for prefix in ("network.", "ema.module."):
            convs = backbone(module.state_dict(), prefix)
            assert len(convs) == 20
            for key, value in convs.items():
                assert torch.equal(value, exported[key]), f"{prefix}{key}"
        assert module.network.fc.weight.shape == (10, 512) and exported["fc.weight"].shape == (7, 512)
    assert "new classifier head 'fc'" in caplog.text  # Lightning's console logger, on rank 0


def test_a_weights_file_of_another_arch_is_a_clear_error(exported):
    with pytest.raises(InvalidValue, match=r"seven\.pt: does not fit.*missing \(\d+\): layer1\.0\.bn3"):
        ImageClassifier(arch="resnet50", num_classes=10, init_weights=exported["path"])
    with pytest.raises(InvalidValue, match="no such file"):
        ImageClassifier(arch="resnet18", num_classes=10, init_weights="/nonexistent/weights.pt")


@pytest.mark.slow
@pytest.mark.parametrize(
    "distributed",
    [[], ["--trainer.strategy=ddp", "--trainer.accelerator=cpu", "--trainer.devices=2"]],
    ids=["one-process", "ddp-2-ranks"],  # under DDP the backbone keeps requires_grad; its gradients are dropped
)
def test_fine_tune_through_the_cli_with_a_frozen_backbone(exported, ffcv_dir, tmp_path, distributed):
    """Two steps of the real CLI, backbone frozen for epoch 0: only the new 10-class head moves."""
    result = run_cli(
        "fit",
        "--config",
        str(CONFIGS / "demo_cpu.yaml"),
        f"--data.data_dir={ffcv_dir}",
        f"--model.init_weights={exported['path']}",
        "--model.freeze_backbone_epochs=1",
        *TINY,
        *distributed,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "new classifier head 'fc'" in result.stderr
    # What the run starts from, and the freeze, in the log (epochs counted from 1 as everywhere a user reads).
    assert f": starting from init_weights {exported['path']}" in result.stderr, result.stderr[-3000:]
    assert "model.freeze_backbone_epochs=1: epoch 1, backbone frozen" in result.stderr
    state = load_checkpoint(tmp_path / "demo_output/run/checkpoints/checkpoint_latest.ckpt")["state_dict"]
    for key, value in backbone(state).items():
        assert torch.equal(value, exported[key]), key
    assert state["network.fc.weight"].shape == (10, 512)
    assert load_checkpoint(tmp_path / "demo_output/run/checkpoints/checkpoint_latest.ckpt")["global_step"] == 2


class Weights(L.Callback):
    """conv1's weight when training starts and at the end of every epoch."""

    def __init__(self):
        self.at_start: torch.Tensor | None = None
        self.after_epoch: list[torch.Tensor] = []

    def on_train_start(self, trainer, pl_module):
        self.at_start = pl_module.network.conv1.weight.detach().clone()

    def on_train_epoch_end(self, trainer, pl_module):
        self.after_epoch.append(pl_module.network.conv1.weight.detach().clone())


def test_backbone_frozen_for_epoch_0_then_trained_and_the_optimizer_holds_everything(exported):
    module = ImageClassifier(
        arch="resnet18",
        num_classes=10,
        lr=0.05,
        warmup_epochs=0,
        init_weights=exported["path"],
        freeze_backbone_epochs=1,
    )
    weights = Weights()
    trainer = quiet_trainer(max_epochs=2, callbacks=[weights])
    trainer.fit(module, RepeatedBatches(synthetic_batch(4, 32, 10, torch.device("cpu")), 2))
    assert torch.equal(weights.at_start, exported["conv1.weight"])
    assert torch.equal(weights.after_epoch[0], exported["conv1.weight"])  # frozen in epoch 0
    assert not torch.equal(weights.after_epoch[1], exported["conv1.weight"])  # trained in epoch 1
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in module.network.parameters()}
    decay_free = trainer.optimizers[0].param_groups[1]["params"]
    assert any(p is module.network.bn1.weight for p in decay_free) and all(p.dim() == 1 for p in decay_free)


def test_resume_keeps_the_checkpoint_weights_not_init_weights(exported, tmp_path):
    """Lightning loads the checkpoint after construction: the resumed weights win over ``init_weights``."""
    args = {"arch": "resnet18", "num_classes": 10, "lr": 0.05, "warmup_epochs": 0, "init_weights": exported["path"]}
    data = RepeatedBatches(synthetic_batch(4, 32, 10, torch.device("cpu")), 3)
    first = quiet_trainer(max_steps=3)
    first.fit(ImageClassifier(**args), data)
    first.save_checkpoint(tmp_path / "run.ckpt")
    saved = load_checkpoint(tmp_path / "run.ckpt")["state_dict"]["network.conv1.weight"]
    assert not torch.equal(saved, exported["conv1.weight"])

    weights = Weights()
    quiet_trainer(max_steps=4, callbacks=[weights]).fit(ImageClassifier(**args), data, ckpt_path=tmp_path / "run.ckpt")
    assert torch.equal(weights.at_start, saved)
