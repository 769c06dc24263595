"""What the tools tell a user after a success: real counts, the parameter that differs, warnings counted apart.

Each through the real CLI in a subprocess, in the test's temporary directory (issue 28, item 9).
"""

from __future__ import annotations

import json
import re

from .helpers import REPO, run_cli
from .spot_support import write_config


def test_make_synthetic_says_what_it_wrote_and_its_help_describes_each_option(tmp_path):
    result = run_cli("make-synthetic", "--root", "images", "--train_per_class", "2", "--val_per_class", "1",
                     "--num_classes", "2", "--max_side", "64", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "wrote 4 train and 2 val JPEGs (2 classes: red_circle, green_square" in result.stdout
    assert len(list((tmp_path / "images" / "train").rglob("*.JPEG"))) == 4
    help_text = run_cli("make-synthetic", "--help").stdout
    for described in ("training images per class", "validation images per class", "random seed", "longest allowed"):
        assert described in help_text, help_text


def test_write_report_counts_what_was_written_and_a_rerun_names_the_parameter_that_differs(tmp_path, image_folder):
    out = tmp_path / "ffcv"
    first = run_cli("write-dataset", f"--source_dir={image_folder}", f"--output_dir={out}", "--preset=rn18")
    assert first.returncode == 0, first.stderr
    counts = json.loads((out / "write_report.json").read_text())["counts"]
    assert counts == {"train/written": 80, "val/written": 40}
    rerun = run_cli("write-dataset", f"--source_dir={image_folder}", f"--output_dir={out}", "--preset=rn50")
    assert rerun.returncode != 0 and "Traceback" not in rerun.stderr
    assert "max_resolution: 400 in the manifest, 500 now" in rerun.stderr, rerun.stderr
    assert "compress_probability: 0.1 in the manifest, 0.5 now" in rerun.stderr


def test_doctor_counts_a_warning_apart_from_the_passes(tmp_path, ffcv_dir):
    """W&B online without credentials is a WARN line: the tally says "1 warning", not "12 of 12 passed"."""
    result = run_cli(
        "doctor", "--config", str(write_config(tmp_path, ffcv_dir)), "--trainer.logger.init_args.offline=false",
        env={"NETRC": str(tmp_path / "no-netrc")}, unset=("WANDB_MODE", "WANDB_API_KEY"),
    )  # fmt: skip
    assert "[WARN] W&B" in result.stdout, result.stdout
    lines = result.stdout.splitlines()
    passed = sum(line.startswith("[PASS]") for line in lines)
    failed = sum(line.startswith("[FAIL]") for line in lines)
    tally = f"{passed} passed, 1 warning" + (f", {failed} failed" if failed else "")
    assert tally in lines[-1], lines[-1]


def test_readme_commands_table_lists_every_subcommand():
    """The README's Commands table against the subcommands `resnet-ffcv --help` lists (evaluate, curves, ...)."""
    listed = run_cli("--help").stdout.split("subcommands (each has its own --help):")[1].split("\n\n")[0]
    subcommands = {line.split()[0] for line in listed.strip().splitlines()}
    table = (REPO / "README.md").read_text().split("## Commands")[1].split("\n## ")[0]
    in_table = set(re.findall(r"`resnet-ffcv ([\w-]+)", table)) | set(re.findall(r" / ([\w-]+)", table))
    assert subcommands - in_table == set(), f"missing from the README's Commands table: {subcommands - in_table}"
    fine_tuning = " ".join((REPO / "README.md").read_text().split("### Fine-tuning")[1].split("\n## ")[0].split())
    assert "read only by a fresh `fit`" in fine_tuning
