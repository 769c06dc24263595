"""The LightningModule: the training recipe around a torchvision classifier, read top to bottom.

Construction is named steps (``configure_network / configure_training / configure_evaluation``); each part of the
recipe is a module of its own: the network (``networks.py``: BlurPool, zero-init, channels_last), MixUp/CutMix
(``mixing.py``), SGD with BatchNorm and biases exempt from weight decay and the gradient statistics (``optim.py``),
an LR set on every batch from a function of the fractional epoch (``schedules.py``), an EMA copy of the weights
(``ema.py``), the metrics of the raw and the EMA weights (``evaluation.py``), the frozen backbone of a fine-tune
(``finetune.py``) and torch.compile's planned graphs (``compile_plan.py``). Mixed precision is the Trainer's
``precision`` (``bf16-mixed`` on A100/H100); gradient clipping is the Trainer's ``gradient_clip_val``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn

from resnet_ffcv.errors import InvalidValue
from resnet_ffcv.recipe.compile_plan import CompiledNetworks, CompileMode, plan_for_fit
from resnet_ffcv.recipe.ema import DEFAULT_HALF_LIFE_EPOCHS, EMA, adapt_ema_state, check_ema_settings
from resnet_ffcv.recipe.evaluation import (
    NAMES,
    RealSamples,
    ValWeights,
    best_accuracies,
    eval_metrics,
    evaluated_networks,
)
from resnet_ffcv.recipe.finetune import BackboneFreeze
from resnet_ffcv.recipe.mixing import MixPolicy
from resnet_ffcv.recipe.networks import build_network, load_init_weights
from resnet_ffcv.recipe.optim import GradientStats, build_sgd
from resnet_ffcv.recipe.schedules import EpochLR, Schedule, ScheduleName, steps_per_epoch
from resnet_ffcv.recipe.validation_schedule import ValidationSchedule

# ImageNet statistics on the 0-255 scale: FFCV hands over uint8 images.
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


# True while modules are built whose weights a checkpoint will give (restore, resume): init_weights is not read.
_WEIGHTS_FROM_CHECKPOINT = contextvars.ContextVar("weights_from_checkpoint", default=False)


@contextlib.contextmanager
def weights_from_checkpoint() -> Iterator[None]:
    """Builds ImageClassifiers without reading ``model.init_weights``: for a module a checkpoint is loaded into (or
    whose caller calls :meth:`ImageClassifier.load_init_weights` once it knows no checkpoint will be)."""
    token = _WEIGHTS_FROM_CHECKPOINT.set(True)
    try:
        yield
    finally:
        _WEIGHTS_FROM_CHECKPOINT.reset(token)


def _check_arguments(predict_top_k: int, label_smoothing: float, val_last_epochs: int) -> None:
    """The ``model.*`` values no other part checks (schedule, mixing, EMA, fine-tune and network check their own)."""
    if val_last_epochs < 0:
        raise InvalidValue(f"model.val_last_epochs={val_last_epochs}: expected >= 0 (0: every_n_epochs alone)")
    if predict_top_k < 1:
        raise InvalidValue(f"model.predict_top_k={predict_top_k}: expected at least 1")
    if not 0.0 <= label_smoothing < 1.0:
        raise InvalidValue(f"model.label_smoothing={label_smoothing}: expected a value in [0, 1)")


class ImageClassifier(L.LightningModule):
    """ImageNet classification with the 78%-in-60-epochs recipe; every argument is a YAML knob (``model.*``).

    Args:
        arch: torchvision model name (``resnet50``; ``resnet18`` for the demo).
        num_classes: output classes; linked from ``data.num_classes`` by the CLI.
        lr: peak learning rate for the actual global batch (the default 0.8 suits a global batch of 2048;
            nothing is scaled by world size) unless ``lr_reference_batch`` is set.
        lr_reference_batch: opt-in linear scaling: ``lr`` is then the LR for this global batch, and the peak
            LR is ``lr * global_batch / lr_reference_batch`` (``lr: 0.1`` with ``256`` gives 0.8 at 2048).
            The global batch is the size of the current training batch tensor (per device) times
            ``trainer.world_size``, so it follows batch-size changes between resolution stages.
        momentum: SGD momentum (unused while ``cycle_momentum`` sets it every step).
        nesterov: Nesterov momentum.
        weight_decay: SGD weight decay (L2).
        no_decay_bn_bias: exempt every BatchNorm parameter and every bias from weight decay (FFCV's recipe).
        label_smoothing: cross-entropy label smoothing, applied once (to the mixed targets when mixing).
        scheduler: LR shape over fractional epochs, ending at ``trainer.max_epochs`` (exact formulas and their
            references in ``schedules.py``): ``onecycle`` (torch's OneCycleLR stepped per iteration: cosine
            warmup from lr/25 over ``warmup_epochs``, cosine anneal to lr/25e4), ``linear_warmup_cosine``
            (the same end points with a linear warmup), ``triangular`` (FFCV's cyclic: ~0 -> lr at
            ``lr_peak_epoch`` -> 0), ``cosine`` (linear warmup from 0, half cosine to ``lr * min_lr_ratio``),
            ``step`` (FFCV's: times ``step_gamma`` at each of ``step_milestones``, spread over the epoch before
            each, down to 0 in the last epoch; no warmup), ``constant``.
        cycle_momentum: with ``onecycle``, OneCycleLR's momentum cycle, set on SGD every step: 0.95 -> 0.85 over
            the warmup, back to 0.95 at the end (``momentum`` is then unused).
        warmup_epochs: warmup length in epochs (onecycle, linear_warmup_cosine, cosine).
        lr_peak_epoch: epoch of the peak for ``triangular`` (FFCV uses 2).
        min_lr_ratio: final LR / peak LR for ``cosine``.
        step_milestones: epochs at which ``step`` has multiplied the LR by ``step_gamma`` (FFCV's step_length 30:
            30, 60, 90).
        step_gamma: factor applied at each step milestone.
        cutmix_prob: chance that a training batch gets CutMix (0 disables it).
        mixup_alpha: MixUp's Beta(alpha, alpha) parameter; batches without CutMix get MixUp when > 0.
        cutmix_alpha: CutMix's Beta(alpha, alpha) parameter for the pasted area (1.0: uniform).
        mix_stop_epoch: first epoch trained without any mixing; ``None`` mixes to the end.
        use_ema: keep an EMA copy of the weights, validated alongside (``val/acc1_ema``) and checkpointed.
            Which one picks the best checkpoint or stops at a target is the ``monitor`` of ModelCheckpoint /
            EarlyStopping: ``val/acc1`` or ``val/acc1_ema``.
        ema_half_life_epochs: EMA horizon in epochs: the per-step decay is set at each training epoch's start
            from the steps in that epoch (``0.5 ** (1 / (half_life * steps))``), so the horizon holds at any
            batch size, GPU count or dataset size. Null with ``ema_decay`` null: 2 epochs.
        ema_decay: EMA decay per optimizer step, for a fixed step count instead (half-life ``ln 2 / (1 - decay)``
            steps: 0.9998 -> 3466 steps, 5.5 ImageNet epochs at batch 2048 but 2.8 at 1024). At most one of
            ``ema_decay`` and ``ema_half_life_epochs`` may be set.
        blurpool: blur before every strided convolution past the stem (FFCV's ResNet-50 recipe).
        zero_init_residual: zero the last BatchNorm gamma of every residual block (blocks start as identity).
        channels_last: NHWC memory format for the network and its inputs (faster convolutions on GPUs).
        compile: ``torch.compile`` the network (and the EMA copy) in place; state-dict keys do not change.
            Static shapes, one graph per (weights, train/eval, resolution, batch), planned before the fit and
            logged at each compile; more than planned + 2 stops the run instead of falling back to eager
            (``compile_plan.py``, docs/performance.md).
        compile_mode: inductor's mode: ``default``; ``max-autotune`` tunes kernels for minutes per graph,
            ``reduce-overhead`` adds CUDA graphs (launch overhead, small at ResNet-50's batch 256).
        compile_backend: ``torch.compile`` backend; tests use ``aot_eager`` (same graphs, seconds per compile).
        val_flip_tta: validate on the sum of the logits of each image and its horizontal flip (as FFCV).
        val_weights: which weights validation evaluates: ``both`` (``val/acc1`` and ``val/acc1_ema``), ``ema``
            or ``raw`` (each validation costs one pass per network, two with ``val_flip_tta``).
        val_last_epochs: the last epochs that always validate, whatever ``trainer.check_val_every_n_epoch`` says
            (``validation_schedule.py``); every validation logs ``val/seconds``.
        predict_with_ema: ``resnet-ffcv predict`` uses the EMA weights when the module keeps them (``use_ema``),
            else the raw ones; the EMA weights usually score higher (compare ``val/acc1_ema``).
        predict_top_k: classes (with probabilities) returned per image by ``predict_step``.
        init_weights: fine-tune from this torchvision-style state_dict file (``resnet-ffcv export``'s output or
            torchvision's ``resnet50-0676ba61.pth``), into the network and its EMA copy. A head of another class
            count is replaced by a fresh one; every other weight must match. Read only where no checkpoint gives
            the weights: a fresh ``fit`` (or validate/predict without ``--ckpt_path``); a resumed run, validate,
            predict, evaluate or export from a checkpoint never opens it, so the file may be gone by then. Built
            directly in Python the module reads it at construction (not within :func:`weights_from_checkpoint`,
            which ``load_from_checkpoint`` uses).
        freeze_backbone_epochs: train only the classifier head for this many first epochs (BatchNorm statistics
            still adapt); the optimizer holds every parameter throughout and skips those without gradients.

    Gradient clipping is the Trainer's ``gradient_clip_val``; mixed precision the Trainer's ``precision``. The
    global gradient norm before clipping (``train/grad_norm``) and the share of steps it exceeded the clip value
    since the last log (``train/clipped_share``) are logged every ``log_every_n_steps``.
    """

    # Read by Lightning's ThroughputMonitor for FLOP/s and MFU; None: it logs images/s only (docs/performance.md
    # turns images/s into a fraction of the GPU's peak with ResNet-50's known FLOPs per image).
    flops_per_batch: int | None = None

    def __init__(
        self,
        arch: str = "resnet50",
        num_classes: int = 1000,
        lr: float = 0.8,
        lr_reference_batch: int | None = None,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 1e-4,
        no_decay_bn_bias: bool = True,
        label_smoothing: float = 0.1,
        scheduler: ScheduleName = "onecycle",
        cycle_momentum: bool = False,
        warmup_epochs: float = 8,
        lr_peak_epoch: float = 2,
        min_lr_ratio: float = 0.0,
        step_milestones: tuple[float, ...] = (30, 60, 80),
        step_gamma: float = 0.1,
        cutmix_prob: float = 0.3,
        mixup_alpha: float = 0.2,
        cutmix_alpha: float = 1.0,
        mix_stop_epoch: int | None = None,
        use_ema: bool = True,
        ema_half_life_epochs: float | None = None,
        ema_decay: float | None = None,
        blurpool: bool = True,
        zero_init_residual: bool = False,
        channels_last: bool = True,
        compile: bool = False,
        compile_mode: CompileMode = "default",
        compile_backend: str = "inductor",
        val_flip_tta: bool = False,
        val_weights: ValWeights = "both",
        val_last_epochs: int = 1,
        predict_with_ema: bool = True,
        predict_top_k: int = 5,
        init_weights: str | None = None,
        freeze_backbone_epochs: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()  # every argument above, unchanged: checkpoints rebuild the module from them
        _check_arguments(predict_top_k, label_smoothing, val_last_epochs)
        check_ema_settings(use_ema, ema_decay, ema_half_life_epochs, val_weights)
        self.configure_network()
        self.configure_training()
        self.configure_evaluation()

    # -- construction ------------------------------------------------------------------------------------------
    def configure_network(self) -> None:
        """The torchvision network (from ``init_weights`` for a fine-tune), its EMA copy, and torch.compile."""
        h = self.hparams
        self.network = build_network(h.arch, h.num_classes, h.blurpool, h.zero_init_residual, h.channels_last)
        # A registered submodule: moved with the module and saved in its state_dict (so in every checkpoint).
        # With a horizon in epochs the decay is set when training starts (_start_epoch): 0.9998 until then.
        self.ema = EMA(self.network, 0.9998 if h.ema_decay is None else h.ema_decay) if h.use_ema else None
        self.init_weights_loaded = False
        if not _WEIGHTS_FROM_CHECKPOINT.get():
            self.load_init_weights()
        # Every forward pass of the network and the EMA copy goes through this when compiled (see _run).
        self._compiled: CompiledNetworks | None = None
        if h.compile:
            self._compiled = CompiledNetworks(h.compile_mode, h.compile_backend)
            for network in [self.network] + ([self.ema.module] if self.ema is not None else []):
                self._compiled.compile(network)  # in place: the state-dict keys stay those of the plain network
        self.memory_format = torch.channels_last if h.channels_last else torch.contiguous_format
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def load_init_weights(self) -> None:
        """``init_weights`` into the network and the EMA copy, once (nothing without it): for a module that no
        checkpoint gives its weights. The head-replacement note is printed here, so once per fresh fit."""
        h = self.hparams
        if h.init_weights is None or self.init_weights_loaded:
            return
        for note in load_init_weights(self.network, h.init_weights, h.num_classes):
            rank_zero_info(f"model.init_weights: {note}")
        if self.ema is not None:
            self.ema.module.load_state_dict(self.network.state_dict())
        self.init_weights_loaded = True

    @classmethod
    def load_from_checkpoint(cls, *args, **kwargs):
        """Lightning's, with the checkpoint's weights only: its ``init_weights`` file is not read (maybe gone)."""
        with weights_from_checkpoint():
            return super().load_from_checkpoint(*args, **kwargs)

    def configure_training(self) -> None:
        """The LR schedule, MixUp/CutMix, the frozen backbone of a fine-tune and the gradient statistics."""
        h = self.hparams
        shape = Schedule(
            name=h.scheduler,
            warmup_epochs=h.warmup_epochs,
            peak_epoch=h.lr_peak_epoch,
            min_ratio=h.min_lr_ratio,
            milestones=tuple(h.step_milestones),
            gamma=h.step_gamma,
            cycle_momentum=h.cycle_momentum,
        )
        self.lr_schedule = EpochLR(shape, h.lr, h.lr_reference_batch)
        self.mix = MixPolicy(h.num_classes, h.cutmix_prob, h.mixup_alpha, h.cutmix_alpha, h.mix_stop_epoch)
        self.freeze = BackboneFreeze(self.network, h.num_classes, h.freeze_backbone_epochs)
        self.gradients = GradientStats()
        self._batch_idx = 0
        self._started_epoch: int | None = None  # the epoch whose per-epoch settings are applied (_start_epoch)

    def configure_evaluation(self) -> None:
        """Top-1, top-5 and loss of the raw and the EMA weights, each sample counted once under DDP."""
        h = self.hparams
        self.eval_metrics = eval_metrics(h.num_classes, with_ema=h.use_ema, val_weights=h.val_weights)
        self.real_samples = RealSamples()

    def configure_callbacks(self) -> list[L.Callback]:
        """The validation schedule (its keys are ``model.val_*``, so configs compose them key by key)."""
        return [ValidationSchedule(self.hparams.val_last_epochs)]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        h = self.hparams
        return build_sgd(self.network, h.lr, h.momentum, h.nesterov, h.weight_decay, h.no_decay_bn_bias)

    # -- torch.compile -----------------------------------------------------------------------------------------
    def _run(self, network: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """``network(inputs)``; compiled, through the static graph of the epoch's full batch (a smaller one is
        padded at evaluation, eager in training) with each new graph logged."""
        if self._compiled is None:
            return network(inputs)
        return self._compiled(network, "network" if network is self.network else "ema", inputs)

    def setup(self, stage: str) -> None:
        """Plans the fit's graphs from the shapes our FFCVDataModule will serve (no plan for other loaders)."""
        datamodule = self.trainer.datamodule
        if self._compiled is None or stage != "fit" or not hasattr(datamodule, "train_shape"):
            return
        validates = self.trainer.limit_val_batches != 0
        val_shape = datamodule.val_shape() if validates else None
        use_ema = self.ema is not None
        self._compiled.set_plan(plan_for_fit(datamodule.train_shape, self.trainer.max_epochs, val_shape, use_ema))

    def teardown(self, stage: str) -> None:
        if self._compiled is not None:
            self._compiled.restore()

    def _start_eval_epoch(self) -> None:
        self.real_samples.reset()
        if self._compiled is not None:
            self._compiled.start_epoch(training=False)

    on_validation_epoch_start = on_test_epoch_start = on_predict_epoch_start = _start_eval_epoch

    # -- inputs ------------------------------------------------------------------------------------------------
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW -> normalized on the device, in the network's memory format and the autocast dtype.

        Computed in float32 (exact for 0-255), handed over in bf16/fp16 under mixed precision: the first
        convolution would cast it anyway, and half-size inputs halve what MixUp/CutMix and conv1 read.
        """
        device = images.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else torch.float32
        normalized = (images.float() - self.mean) / self.std
        return normalized.to(dtype).contiguous(memory_format=self.memory_format)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(self.normalize(images))

    # -- training ----------------------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._start_epoch()

    def _start_epoch(self) -> None:
        """Per-epoch settings (compiled batch shape, frozen backbone, EMA decay), once per epoch and process.

        Also called from the first batch: Lightning skips ``on_train_epoch_start`` when it resumes in the middle
        of an epoch, and the resumed process must set what the interrupted one had set at that epoch's start.
        """
        if self._started_epoch == self.current_epoch:
            return
        self._started_epoch = self.current_epoch
        if self._compiled is not None:
            self._compiled.start_epoch(training=True)
        self.freeze.start_epoch(self.current_epoch, self.trainer.world_size)
        if self.ema is not None and self.hparams.ema_decay is None:  # a horizon in epochs: this epoch's steps
            half_life = self.hparams.ema_half_life_epochs or DEFAULT_HALF_LIFE_EPOCHS
            steps = steps_per_epoch(self.trainer)
            if (decay := self.ema.follow_half_life(half_life, steps)) is not None:
                rank_zero_info(
                    f"EMA: half-life {half_life:g} epochs x {steps} optimizer steps per epoch "
                    f"(global batch {self._global_batch_size()}) -> decay {decay:.6f} per step"
                )

    def _global_batch_size(self) -> str:
        batch_size = getattr(self.trainer.train_dataloader, "batch_size", None)
        return "?" if batch_size is None else str(batch_size * self.trainer.world_size)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._start_epoch()  # a no-op unless this process resumed mid-epoch
        # FFCV's distributed sampler gives every rank the same number of samples, so every rank computes the
        # same global batch (and LR) even for a last, smaller batch.
        global_batch = batch[0].shape[0] * self.trainer.world_size
        lr = self.lr_schedule.apply(self.trainer, self.trainer.optimizers[0], batch_idx, global_batch)
        self._batch_idx = batch_idx
        if self._reaches_loggers(batch_idx):
            # A host tensor: self.log would turn a float into ``torch.tensor(lr, device=cuda)``, a blocking
            # host->device copy that synchronizes the stream.
            self.log("train/lr", torch.tensor(lr, dtype=torch.float32), on_step=True, on_epoch=False)

    def _reaches_loggers(self, batch_idx: int) -> bool:
        """Whether a step-only value logged in this batch is ever read: on the steps Lightning writes to the
        loggers (its ``log_every_n_steps`` rule), and on an epoch's or the run's last batch (callback metrics).

        Each ``self.log`` call costs ~4 ms of host time on a small CPU (Lightning deep-copies the metric's
        metadata); measured on resnet18 at 64 px, logging the LR every step made the step 2% slower.
        """
        trainer = self.trainer
        step = trainer.global_step + 1
        every = trainer.log_every_n_steps
        return (
            (every > 0 and step % every == 0)
            or batch_idx + 1 == trainer.num_training_batches
            or (trainer.max_steps > 0 and step >= trainer.max_steps)
        )

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        inputs, targets = self.mix(self.normalize(images), labels, self.current_epoch)
        logits = self._run(self.network, inputs.contiguous(memory_format=self.memory_format))
        # Targets are class indices or (mixed) probabilities; either way PyTorch smooths them once here.
        loss = F.cross_entropy(logits, targets, label_smoothing=self.hparams.label_smoothing)
        # Not on the progress bar: it reads its metrics with ``.item()`` at every refresh (each step by default),
        # a device->host sync per step. Loggers read it every ``trainer.log_every_n_steps`` steps.
        self.log("train/loss", loss, on_step=True, on_epoch=True)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Lightning calls this after unscaling and before clipping: a frozen backbone's gradients are dropped,
        then the global norm (what ``gradient_clip_val`` is compared to) is kept on the device and read on the
        host only on logging steps (a per-step ``.item()`` would stall the GPU queue)."""
        self.freeze.drop_gradients()
        clip = self.trainer.gradient_clip_val, self.trainer.gradient_clip_algorithm
        if self.gradients.observe(optimizer, *clip) and self._reaches_loggers(self._batch_idx):
            for name, value in self.gradients.logged(*clip).items():
                self.log(name, value, on_step=True, on_epoch=False)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update_parameters(self.network)

    # -- evaluation --------------------------------------------------------------------------------------------
    def _logits(self, network: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        logits = self._run(network, inputs)
        if self.hparams.val_flip_tta:
            logits = logits + self._run(network, inputs.flip(3).contiguous(memory_format=self.memory_format))
        return logits

    def _evaluate(self, batch, stage: str) -> None:
        images, labels = batch
        loaders = self.trainer.test_dataloaders if self.trainer.testing else self.trainer.val_dataloaders
        count = self.real_samples.take(labels.shape[0], loaders, self.trainer.world_size, self.trainer.global_rank)
        if count == 0:
            return
        images, labels = images[:count], labels[:count]
        inputs = self.normalize(images)
        ema_network = self.ema.module if self.ema is not None else None
        for suffix, network in evaluated_networks(self.network, ema_network, self.hparams.val_weights).items():
            logits = self._logits(network, inputs)
            # The loss of the averaged logits: the same predictions as FFCV's sum, on the usual scale.
            scale = 2.0 if self.hparams.val_flip_tta else 1.0
            loss = F.cross_entropy(logits / scale, labels)
            self.eval_metrics["acc1" + suffix](logits, labels)
            self.eval_metrics["acc5" + suffix](logits, labels)
            self.eval_metrics["loss" + suffix](loss, weight=labels.shape[0])
            for name in NAMES:
                metric = self.eval_metrics[name + suffix]
                self.log(f"{stage}/{name}{suffix}", metric, prog_bar=name == "acc1", batch_size=labels.shape[0])

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        # Logged with EMA on or off: the one top-1 every config can monitor (config_checks.py). acc5 comes from
        # the same weights as acc1.
        acc1, acc5 = best_accuracies(self.eval_metrics, with_ema=self.ema is not None)
        self.log("val/acc1_best", acc1)
        self.log("val/acc5_best", acc5)

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    @property
    def predict_network(self) -> nn.Module:
        """The weights ``predict_step`` uses: EMA when kept and ``predict_with_ema``, else the raw ones."""
        use_ema = self.hparams.predict_with_ema and self.ema is not None
        return self.ema.module if use_ema else self.network

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """Top-k ``probabilities`` (descending) and their ``classes`` for a batch of uint8 images."""
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        logits = self._logits(self.predict_network, self.normalize(images))
        scale = 2.0 if self.hparams.val_flip_tta else 1.0  # the flip's logits were added: average them
        # float32 softmax: under bf16-mixed the logits are bf16, good to ~3 digits only
        probabilities = (logits.float() / scale).softmax(dim=1)
        top = probabilities.topk(min(self.hparams.predict_top_k, probabilities.shape[1]), dim=1)
        return {"probabilities": top.values, "classes": top.indices}

    # -- checkpoints -------------------------------------------------------------------------------------------
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Accept checkpoints written with the EMA switched the other way: drop it, or start it anew."""
        adapt_ema_state(checkpoint["state_dict"], self.ema)
