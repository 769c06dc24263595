"""Runs in the SkyPilot launcher venv (.venv-sky): parses task files with SkyPilot's own loader and prints the
fields the tests check as JSON, one entry per request. SkyPilot lives in its own venv because skypilot 0.14 pins
click<8.2 while wandb needs click>=8.2: one environment cannot hold both, and SkyPilot runs on the launching
machine anyway. Every request is answered by this one process (importing SkyPilot takes seconds).

    .venv-sky/bin/python tests/sky_load.py '[["TASK.yaml", [["DATA_URL", "s3://..."], ...]], ...]'
"""

import json
import sys

import yaml

import sky


def fields(path: str, overrides: list) -> dict:
    with open(path) as f:
        config = yaml.safe_load(f)
    try:
        task = sky.Task.from_yaml_config(config, env_overrides=[tuple(pair) for pair in overrides])
    except ValueError as error:
        return {"error": str(error)}
    [resources] = list(task.resources)
    return {
        "use_spot": resources.use_spot,
        "job_recovery": resources.job_recovery,
        "accelerators": resources.accelerators,
        "instance_type": resources.instance_type,
        "num_nodes": task.num_nodes,
        "run": task.run,
        "setup": task.setup,
        "envs": task.envs,
    }


print(json.dumps([fields(path, overrides) for path, overrides in json.loads(sys.argv[1])]))
