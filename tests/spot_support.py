"""Config and process helpers shared by the checkpointing and spot tests (each test runs the real CLI)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import lightning as L
import yaml

from resnet_ffcv.callbacks.spot import REBALANCE_PATH, SPOT_ACTION_PATH, TOKEN_PATH

from .helpers import cli_command, cli_env

BASE_CONFIG = Path(__file__).with_name("spot_config.yaml")


def write_config(
    tmp_path: Path,
    ffcv_dir: Path,
    extra_callbacks: list[dict] | None = None,
    name: str = "config.yaml",
    spot: dict | None = None,
    **checkpoint_args,
) -> Path:
    """``spot_config.yaml`` with this test's directories, extra callbacks, ``spot:`` and ``checkpoint:`` keys."""
    config = yaml.safe_load(BASE_CONFIG.read_text())
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "logs")
    config["checkpoint"].update({"dirpath": str(tmp_path / "checkpoints"), **checkpoint_args})
    config["spot"].update(spot or {})
    if extra_callbacks:
        config["trainer"]["callbacks"] = extra_callbacks
    config["data"]["data_dir"] = str(ffcv_dir)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


class SlowSteps(L.Callback):
    """Prints ``step N done`` after each training batch and sleeps, so a test can signal at a known step."""

    def __init__(self, seconds: float = 0.3):
        self.seconds = seconds

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        print(f"step {trainer.global_step} done", flush=True)
        time.sleep(self.seconds)


class PacedSteps(L.Callback):
    """Prints ``step N done`` after each training batch, then sleeps ``first`` seconds after the process's first
    step and ``then`` after every other one: a slow start and a slow but steady run (the watchdog tests)."""

    def __init__(self, first: float = 0.0, then: float = 0.0):
        self.first, self.then = first, then
        self._steps = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        print(f"step {trainer.global_step} done", flush=True)
        time.sleep(self.first if self._steps == 0 else self.then)
        self._steps += 1


class CLIProcess:
    """``resnet-ffcv ARGS`` in the background; a thread collects its output (stdout and stderr merged)."""

    def __init__(self, *args: str, env: dict | None = None):
        self.process = subprocess.Popen(
            cli_command(*args),
            env=cli_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, condition, what: str, timeout: float = 300) -> None:
        """Polls ``condition()`` until true; fails if the process exits first or the time runs out."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                self._reader.join(timeout=5)
                if condition():
                    return
                raise AssertionError(f"process exited ({self.process.returncode}) before {what}:\n{self.output}")
            if time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(f"no {what} within {timeout} s:\n{self.output}")
            time.sleep(0.05)

    def wait_for_line(self, needle: str, timeout: float = 300) -> None:
        self.wait_for(lambda: needle in self.output, repr(needle), timeout)

    def finish(self, timeout: float = 300) -> int:
        """Waits for the exit; returns the exit code (negative: killed by that signal)."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        self._reader.join(timeout=10)
        return code


class FakeIMDS(ThreadingHTTPServer):
    """IMDSv2 as AWS documents it: PUT a token, GET with it; 404 until ``arm()``, then the termination
    notice."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), MetadataHandler)
        self.token_puts = 0
        self.notice_gets = 0
        self.rejected_once = False
        self.armed = threading.Event()
        self.rebalance = False
        self.notice_served_at: float | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def token(self) -> str:
        return f"token-{self.token_puts}"


class MetadataHandler(BaseHTTPRequestHandler):
    server: FakeIMDS

    def log_message(self, *args) -> None:
        pass

    def reply(self, code: int, body: str = "") -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:
        if self.path != f"/{TOKEN_PATH}" or not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            return self.reply(400)
        self.server.token_puts += 1
        self.reply(200, self.server.token)

    def do_GET(self) -> None:
        if self.path == f"/{REBALANCE_PATH}" and self.server.rebalance:
            return self.reply(200, json.dumps({"noticeTime": "2026-11-26T07:50:00Z"}))
        if self.path != f"/{SPOT_ACTION_PATH}":
            return self.reply(404)
        if self.headers.get("X-aws-ec2-metadata-token") != self.server.token:
            return self.reply(401)
        if not self.server.rejected_once:  # as if the token had expired: the client must fetch a new one
            self.server.rejected_once = True
            return self.reply(401)
        self.server.notice_gets += 1
        if not self.server.armed.is_set():
            return self.reply(404)
        self.server.notice_served_at = self.server.notice_served_at or time.monotonic()
        self.reply(200, json.dumps({"action": "terminate", "time": "2026-11-26T08:00:00Z"}))
