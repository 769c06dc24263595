"""The ``finite_loss:`` section: a diverged run (NaN/Inf loss) stops with one paragraph and exit 1.

A NaN loss keeps the GPUs busy for the rest of the budget and learns nothing; a retry would diverge again, so
this is a failure, not a restart. The loss is read where it reaches the host anyway: on the logging steps
(``log_every_n_steps``, where the progress line and the loggers read it), never on other steps, and the
validation loss at each validation's end. Under DDP the ranks agree on each check (one all-reduce per logging
step). ``consecutive`` non-finite checks in a row stop the run. The checkpoint callback refuses on its own to
write weights or EMA holding NaN/Inf (:mod:`resnet_ffcv.callbacks.checkpointing`), so the files stay good.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L

from resnet_ffcv.errors import InvalidValue
from resnet_ffcv.run.finite import TrainingDiverged, is_finite


def last_good_checkpoint(trainer: L.Trainer) -> str:
    """The checkpoint a rerun would resume from, as words for a paragraph."""
    callback = trainer.checkpoint_callback
    for path in (getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", "")):
        if path and Path(path).is_file():
            return str(path)
    resumed = getattr(trainer, "ckpt_path", None)
    return str(resumed) if resumed else "none (nothing was saved before)"


def learning_rate(trainer: L.Trainer) -> str:
    return f"{trainer.optimizers[0].param_groups[0]['lr']:.4g}" if trainer.optimizers else "?"


class FiniteLossGuard(L.Callback):
    """Stops the run after ``consecutive`` non-finite loss checks in a row. Always present for ``fit``.

    Args:
        consecutive: how many checks in a row (logging steps, validations) may see a NaN/Inf loss; 1 stops at the
            first. A single one can be a bad batch; weights that turned NaN stay NaN, so a few suffice.
    """

    def __init__(self, consecutive: int = 3):
        if consecutive < 1:
            raise InvalidValue(f"finite_loss.consecutive={consecutive}: expected at least 1")
        self.consecutive = consecutive
        self.bad: list[str] = []  # the checks that saw a non-finite loss, since the last finite one

    def _check(self, trainer: L.Trainer, value, where: str) -> None:
        bad_here = value is not None and not is_finite(value)
        if trainer.world_size > 1:
            bad_here = trainer.strategy.reduce_boolean_decision(bad_here, all=False)  # every rank stops together
        if not bad_here:
            self.bad = []
            return
        self.bad.append(where)
        if len(self.bad) >= self.consecutive:
            raise TrainingDiverged(
                f"the loss is NaN/Inf at {len(self.bad)} checks in a row ({', '.join(self.bad)}): the run diverged "
                f"at step {trainer.global_step}, epoch {trainer.current_epoch}, LR {learning_rate(trainer)}. "
                f"Stopped with exit code 1 (a divergence is not retried); no checkpoint was written from a NaN "
                f"model, the last good one is {last_good_checkpoint(trainer)}. Lower model.lr (or raise "
                f"model.warmup_epochs, set trainer.gradient_clip_val), then rerun: it resumes from that checkpoint "
                f"(add --resume_with config for a changed value). finite_loss.consecutive is {self.consecutive}."
            )

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        every = trainer.log_every_n_steps or 50
        last_of_epoch = batch_idx + 1 == trainer.num_training_batches
        if trainer.global_step % every and not last_of_epoch:
            return  # not a logging step: the loss stays on the device
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        self._check(trainer, None if loss is None else float(loss), f"step {trainer.global_step} loss")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        loss = trainer.callback_metrics.get("val/loss")
        self._check(trainer, None if loss is None else float(loss), f"validation of epoch {trainer.current_epoch}")
