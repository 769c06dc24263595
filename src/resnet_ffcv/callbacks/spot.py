"""Use the two-minute spot notice: save ``checkpoint_latest.ckpt`` mid-epoch, exit before AWS reclaims.

Rank 0 polls the EC2 instance metadata service (IMDSv2) in a background thread. SIGTERM and SIGINT set the
process's stop flag (:mod:`resnet_ffcv.run.stop_signals`, installed by ``resnet-ffcv fit`` at process start, so a
signal during start-up is kept too). In a single process the flag is read after every training batch; under DDP
all ranks learn it through one all-reduce every ``check_every_n_batches`` batches. Then all ranks save
``checkpoint_latest.ckpt`` together and leave ``trainer.fit`` by raising :class:`TrainingInterrupted`;
``resnet-ffcv`` turns that into exit code :data:`INTERRUPTED_EXIT_CODE` (75, EX_TEMPFAIL: "temporary failure,
rerun me"). ``scripts/spot_training.sh`` reads it. A stop requested before the first batch exits 75 at once with
nothing new to save. On an epoch's last batch the stop waits for that epoch's validation and epoch-end
checkpoint and happens at the next epoch's start.

Exit codes of ``resnet-ffcv fit``: 0 finished (max_epochs or target accuracy), 75 interrupted with
``checkpoint_latest.ckpt`` saved (rerun the same command), 76 stalled (``callbacks/watchdog.py``), anything else
failed; the table is in docs/spot-safety.md.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from resnet_ffcv.callbacks.checkpointing import SpotCheckpoint
from resnet_ffcv.errors import InvalidValue
from resnet_ffcv.run.resume import LATEST_NAME
from resnet_ffcv.run.stop_signals import INTERRUPTED_EXIT_CODE, STOP

__all__ = ["INTERRUPTED_EXIT_CODE", "SpotInterruption", "TrainingInterrupted"]

SPOT_ACTION_PATH = "latest/meta-data/spot/instance-action"
REBALANCE_PATH = "latest/meta-data/events/recommendations/rebalance"
TOKEN_PATH = "latest/api/token"
TOKEN_TTL_S = 21600


class TrainingInterrupted(Exception):
    """Raised out of ``trainer.fit`` once ``checkpoint_latest.ckpt`` is saved; the CLI exits ``exit_code``."""

    exit_code = INTERRUPTED_EXIT_CODE


class MetadataUnavailable(Exception):
    """No instance metadata service answers (not on EC2, or IMDS disabled)."""


class InstanceMetadata:
    """The two IMDSv2 calls we need: a session token (PUT) and GETs carrying it; a 401 fetches a new token.

    Written on urllib rather than a client package: ``ec2-metadata`` (3.0) hard-codes the 169.254.169.254
    endpoint in its constructor, raises on a 401 instead of refreshing the token, has no
    rebalance-recommendation call and pulls in ``requests``; botocore's ``InstanceMetadataFetcher`` takes an
    endpoint and does IMDSv2, but offers only credentials publicly (arbitrary paths go through its private
    ``_get_request``) for a 15 MB dependency.
    """

    def __init__(self, endpoint: str, timeout: float):
        self.endpoint = endpoint.rstrip("/")
        self.timeout = timeout
        self._token: str | None = None

    def _open(self, request: urllib.request.Request):
        return urllib.request.urlopen(request, timeout=self.timeout)

    def refresh_token(self) -> None:
        request = urllib.request.Request(
            f"{self.endpoint}/{TOKEN_PATH}",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)},
        )
        try:
            with self._open(request) as response:
                self._token = response.read().decode()
        except (urllib.error.URLError, OSError) as error:
            raise MetadataUnavailable(f"{self.endpoint}: {error}") from error

    def get(self, path: str) -> str | None:
        """The body at ``path``, or None on 404 (no such event)."""
        if self._token is None:
            self.refresh_token()
        for attempt in range(2):
            request = urllib.request.Request(
                f"{self.endpoint}/{path}", headers={"X-aws-ec2-metadata-token": self._token or ""}
            )
            try:
                with self._open(request) as response:
                    return response.read().decode()
            except urllib.error.HTTPError as error:
                if error.code == 404:
                    return None
                if error.code == 401 and attempt == 0:  # token expired or revoked
                    self.refresh_token()
                    continue
                raise
        raise AssertionError("unreachable")


class SpotInterruption(Callback):
    """Save and exit cleanly on a spot interruption notice, SIGTERM or SIGINT (a second Ctrl-C aborts now).

    Always present for ``fit``: the ``spot:`` config section holds these arguments (never ``trainer.callbacks``,
    which a later config replaces whole).

    Args:
        endpoint: instance metadata service base URL; tests point it at a local server.
        poll_interval: seconds between polls (AWS suggests 5).
        request_timeout: seconds per metadata request; when the first token request fails, polling turns off.
        stop_on_rebalance: also stop on a rebalance recommendation (often earlier than the notice; it may
            never be followed by an interruption).
        handle_signals: turn SIGTERM / SIGINT into the same save-and-exit.
        check_every_n_batches: under DDP, all-reduce the stop flag every this many batches (each check syncs
            the GPU with the host once; at ~0.05 s per step, 10 batches are half a second of the two minutes).
            A single process reads its flag after every batch.
    """

    def __init__(
        self,
        endpoint: str = "http://169.254.169.254",
        poll_interval: float = 5.0,
        request_timeout: float = 1.0,
        stop_on_rebalance: bool = False,
        handle_signals: bool = True,
        check_every_n_batches: int = 10,
    ):
        if poll_interval <= 0 or request_timeout <= 0 or check_every_n_batches < 1:
            raise InvalidValue(
                f"spot.poll_interval={poll_interval} and spot.request_timeout={request_timeout} "
                f"must be > 0, spot.check_every_n_batches={check_every_n_batches} >= 1"
            )
        self.endpoint = endpoint
        self.poll_interval = poll_interval
        self.request_timeout = request_timeout
        self.stop_on_rebalance = stop_on_rebalance
        self.handle_signals = handle_signals
        self.check_every_n_batches = check_every_n_batches
        self._reason: str | None = None  # from the metadata service; signals live in STOP (the whole process)
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous_handlers: dict[int, object] = {}

    @property
    def stop_requested(self) -> str | None:
        """Why this rank wants to stop, or None."""
        return self._reason or (STOP.reason if self.handle_signals else None)

    def request_stop(self, reason: str) -> None:
        if self._reason is None:
            self._reason = reason
            rank_zero_info(f"Stop requested: {reason}; stopping at the next batch boundary")

    # -- lifecycle -----------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and not isinstance(trainer.checkpoint_callback, SpotCheckpoint):
            raise InvalidValue(
                f"SpotInterruption saves {LATEST_NAME} through SpotCheckpoint (the `checkpoint:` section); "
                f"the Trainer's checkpoint callback is {type(trainer.checkpoint_callback).__name__}"
            )

    def _take_over_signals(self, trainer: L.Trainer) -> None:
        """Puts our handler back over Lightning's (registered in ``Trainer._run`` after the setup hooks).

        Lightning's handler calls ours too, but it also sets ``received_sigterm``, on which its loops raise
        ``SIGTERMException`` (exit 0, or a lost epoch) at points of their choosing: that SIGTERM is ours now.
        """
        if not self.handle_signals:
            return
        previous = STOP.install()
        self._previous_handlers = self._previous_handlers or previous
        connector = getattr(trainer, "_signal_connector", None)
        if getattr(connector, "received_sigterm", False):
            STOP.reason = STOP.reason or "received SIGTERM"
            connector.received_sigterm = False

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take_over_signals(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take_over_signals(trainer)
        signals = "SIGTERM/SIGINT and " if self.handle_signals else ""
        rank_zero_info(
            f"Armed: {signals}spot notices from {self.endpoint} save {LATEST_NAME} and exit {INTERRUPTED_EXIT_CODE}"
        )
        if trainer.is_global_zero:
            self._closing.clear()
            self._thread = threading.Thread(target=self.poll_until_notice, name="spot-notice-poller", daemon=True)
            self._thread.start()

    def poll_until_notice(self) -> None:
        """The background thread: polls until a notice, a heeded rebalance or the end of training."""
        client = InstanceMetadata(self.endpoint, self.request_timeout)
        try:
            client.refresh_token()
        except MetadataUnavailable as error:
            rank_zero_info(f"No instance metadata service ({error}): spot notice polling is off")
            return
        while not self._closing.is_set() and self._reason is None:
            try:
                action = client.get(SPOT_ACTION_PATH)
                if action is not None:
                    notice = json.loads(action)
                    self.request_stop(f"spot interruption notice: {notice.get('action')} at {notice.get('time')}")
                    return
                if self.stop_on_rebalance and (rebalance := client.get(REBALANCE_PATH)) is not None:
                    self.request_stop(f"rebalance recommendation: {rebalance.strip()}")
                    return
            except (urllib.error.URLError, OSError, ValueError, MetadataUnavailable) as error:
                rank_zero_info(f"Spot notice poll failed ({error}); retrying in {self.poll_interval} s")
            self._closing.wait(self.poll_interval)

    # -- the batch boundary --------------------------------------------------------------------------------
    def _all_ranks_stop(self, trainer: L.Trainer) -> bool:
        """True on every rank when any rank has a reason to stop (one all-reduce under DDP)."""
        return trainer.strategy.reduce_boolean_decision(self.stop_requested is not None, all=False)

    def _exit(self, trainer: L.Trainer, where: str) -> None:
        message = (
            f"{self.stop_requested or 'another rank was told to stop'}: {where}, step {trainer.global_step}; "
            f"exiting with code {INTERRUPTED_EXIT_CODE} (rerun the same command to resume)"
        )
        rank_zero_info(message)
        raise TrainingInterrupted(message)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int):
        batches = trainer.num_training_batches
        if batch_idx + 1 >= batches:
            # The epoch's last batch: let validation and the epoch-end checkpoint run, stop at the next epoch
            # start. (A checkpoint from the last batch's end resumes *past* that epoch's validation and
            # epoch-end hooks in Lightning 2.6: no val metrics, no periodic file for that epoch.)
            return
        if trainer.world_size > 1 and (batch_idx + 1) % self.check_every_n_batches:
            return  # the all-reduce only every N batches; one process reads its own flag every batch
        if self._all_ranks_stop(trainer):
            path = trainer.checkpoint_callback.save_latest(trainer)
            self._exit(trainer, f"saved {path} at epoch {trainer.current_epoch + 1}, batch {batch_idx + 1}/{batches}")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Nothing trained since the last epoch-end save, the checkpoint this run resumed from, or ever (a stop
        # during start-up): nothing new to save.
        if self._all_ranks_stop(trainer):
            self._exit(trainer, f"stopping at the start of epoch {trainer.current_epoch + 1}, nothing new to save")

    def _shutdown(self) -> None:
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=self.request_timeout + 1)
            self._thread = None
        STOP.restore(self._previous_handlers)
        self._previous_handlers = {}

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._shutdown()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._shutdown()
