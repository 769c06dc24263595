"""A console that answers "how far, how fast, how long": epoch N/max, step, whole-run ETA, images/s, loss, LR,
resolution and cost.

On a terminal Lightning's progress bar stays and gets the ETA, LR and resolution as extra fields. Without one
(tmux logs, ``spot_training.sh | tee``, nohup) a ``\\r``-redrawn bar turns a log into one unreadable line, so the
bar is removed and one plain line is printed every ``log_every_n_steps`` steps instead.

The ETA counts training steps only (validation adds its own passes) and weighs every remaining epoch by its
pixels: a later 224 px epoch of a 160 -> 224 px schedule takes (224/160)^2 = 2x the time of a 160 px one.
"""

from __future__ import annotations

import datetime
import sys
import time
from typing import Literal

import lightning as L
from lightning.pytorch.callbacks import ProgressBar

from resnet_ffcv.callbacks.cost import CostMonitor, images_in_batch
from resnet_ffcv.errors import InvalidValue


def format_duration(seconds: float) -> str:
    """``1:02:03`` (hours:minutes:seconds), ``3d 4:05:06`` past a day."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    text = str(datetime.timedelta(seconds=rest))
    return f"{days}d {text}" if days else text


class ProgressPrinter(L.Callback):
    """Progress lines without a terminal, extra progress-bar fields with one. The CLI always adds it (``progress:``).

    Args:
        log_every_n_steps: steps between two lines (and field refreshes); None: ``trainer.log_every_n_steps``.
        lines: ``auto`` (plain lines when stdout is not a terminal), ``always`` or ``never``.
    """

    def __init__(self, log_every_n_steps: int | None = None, lines: Literal["auto", "always", "never"] = "auto"):
        if lines not in ("auto", "always", "never"):
            raise InvalidValue(f"progress.lines={lines!r}: expected auto, always or never")
        if log_every_n_steps is not None and log_every_n_steps < 1:
            raise InvalidValue(f"progress.log_every_n_steps={log_every_n_steps}: expected at least 1 (or null)")
        self.log_every_n_steps = log_every_n_steps
        self.lines = lines
        self.fields: dict[str, str] = {}
        self._reset_clock()

    def _reset_clock(self) -> None:
        self._pixels = 0.0  # images x resolution^2 timed in this process, over _seconds
        self._seconds = 0.0
        self._batch_start: float | None = None
        self._window_start, self._window_images = time.monotonic(), 0

    def print_lines(self) -> bool:
        return self.lines == "always" or (self.lines == "auto" and not sys.stdout.isatty())

    # -- hooks -----------------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.print_lines():  # no \r-redrawn bar in a log file
            trainer.callbacks = [callback for callback in trainer.callbacks if not isinstance(callback, ProgressBar)]
        elif (bar := trainer.progress_bar_callback) is not None:
            # Both of Lightning's bars (TQDM, Rich) read get_metrics at every refresh: add our fields there.
            original = bar.get_metrics

            def get_metrics(trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
                return {"epoch": self.epochs(trainer), **original(trainer, pl_module), **self.fields}

            bar.get_metrics = get_metrics

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset_clock()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._batch_start = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        images = images_in_batch(batch) * trainer.world_size
        resolution = int(batch[0].shape[-1])
        if batch_idx > 0 and self._batch_start is not None:
            # An epoch's first batch waits for the loader to start (and numba to compile): not a step's time.
            self._seconds += time.monotonic() - self._batch_start
            self._pixels += images * resolution**2
        self._window_images += images
        every = self.log_every_n_steps or trainer.log_every_n_steps or 50
        last_of_epoch = batch_idx + 1 == trainer.num_training_batches
        if (trainer.global_step % every and not last_of_epoch) or not trainer.is_global_zero:
            return
        self.fields = self._fields(trainer, outputs, images, resolution, batch_idx)
        if self.print_lines():
            print(self.line(trainer, batch_idx), flush=True)

    # -- what is shown ---------------------------------------------------------------------------------------
    def _fields(self, trainer, outputs, images: int, resolution: int, batch_idx: int) -> dict[str, str]:
        now = time.monotonic()
        rate = self._window_images / max(1e-9, now - self._window_start)
        self._window_start, self._window_images = now, 0
        fields = {"img/s": f"{rate:.1f}"}
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            fields["loss"] = f"{float(loss):.4f}"  # one device->host read per log_every_n_steps
        if trainer.optimizers:
            fields["lr"] = f"{trainer.optimizers[0].param_groups[0]['lr']:.4g}"
        fields["res"] = f"{resolution}px"
        eta = self.eta_seconds(trainer, images, resolution, batch_idx)
        if eta is not None:
            finish = datetime.datetime.now() + datetime.timedelta(seconds=eta)
            fields["ETA"] = f"{format_duration(eta)} (~{finish:%a %H:%M})"
        cost = next((c for c in trainer.callbacks if isinstance(c, CostMonitor)), None)
        if cost is not None and cost.price_per_hour > 0:
            fields["cost"] = f"${cost.cost_usd():.2f}"
        return fields

    @staticmethod
    def epochs(trainer: L.Trainer) -> str:
        """``3/60``: this epoch, counted from 1, of ``max_epochs``."""
        epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else "?"
        return f"{trainer.current_epoch + 1}/{epochs}"

    def line(self, trainer: L.Trainer, batch_idx: int) -> str:
        batches = trainer.num_training_batches
        of_batches = f"/{batches}" if 0 < batches < float("inf") else ""
        head = f"epoch {self.epochs(trainer)} step {trainer.global_step} (batch {batch_idx + 1}{of_batches})"
        return " | ".join([head, *(f"{name} {value}" for name, value in self.fields.items())])

    def eta_seconds(self, trainer: L.Trainer, images: int, resolution: int, batch_idx: int) -> float | None:
        """Seconds of training left: remaining pixels (image x resolution^2) at the pixel rate measured so far.

        The batches left run to whichever of ``max_epochs`` and ``max_steps`` comes first; each later epoch is
        weighed by its resolution from the datamodule (``train_shape``), also when ``max_steps`` ends inside it.
        """
        batches = trainer.num_training_batches
        if self._seconds <= 0 or not 0 < batches < float("inf"):
            return None
        # global_step counts optimizer steps: one per accumulate_grad_batches batches.
        steps = trainer.max_steps - trainer.global_step if trainer.max_steps > 0 else None
        batches_left = float("inf") if steps is None else steps * trainer.accumulate_grad_batches
        max_epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
        if max_epochs is None and steps is None:
            return None
        train_shape = getattr(
            trainer.datamodule, "train_shape", None
        )  # FFCVDataModule's (resolution, batch) of epoch k
        take = max(0, min(batches - batch_idx - 1, batches_left))
        remaining, batches_left = take * images * resolution**2, batches_left - take
        epoch = trainer.current_epoch + 1
        while batches_left > 0 and (max_epochs is None or epoch < max_epochs):
            future = train_shape(epoch)[0] if train_shape is not None else resolution
            take = min(batches, batches_left)  # an epoch's images at this batch size, at its resolution
            remaining, batches_left, epoch = remaining + take * images * future**2, batches_left - take, epoch + 1
        return remaining * self._seconds / self._pixels
