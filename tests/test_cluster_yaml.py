"""The `ray up` cluster files: Ray's own validator, then the properties our deployment relies on.

Validation runs the same offline steps as `ray up` before it contacts a cloud:
`prepare_config` (defaults merged, on-prem node type built) then `validate_config`
(the autoscaler's JSON schema, ray/autoscaler/ray-schema.json, plus its cross-field checks).
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
AWS = ROOT / "cluster" / "cluster.yaml"
ONPREM = ROOT / "cluster" / "onprem.yaml"
LOOPBACK = ROOT / "cluster" / "loopback.yaml"
FILES = [AWS, ONPREM]
ALL_FILES = [AWS, ONPREM, LOOPBACK]
DOCS = ROOT / "docs" / "cluster.md"

# Ports the dashboard/job server, GCS and Ray client listen on: never open to the world.
PRIVATE_PORTS = {8265, 6379, 10001}
SECRET_PATTERNS = [
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"aws_secret_access_key", re.IGNORECASE),
    re.compile(r"aws_access_key_id", re.IGNORECASE),
    re.compile(r"aws_session_token", re.IGNORECASE),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
]


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def prepared(path: Path) -> dict[str, Any]:
    """The config as `ray up` holds it after its offline preparation, already validated."""
    config = prepare_config(load(path))
    validate_config(config)
    return config


def flag(commands: list[str], name: str) -> str | None:
    """The value of `--name=VALUE` or `--name VALUE` in the `ray start` command, if given."""
    for command in commands:
        if "ray start" not in command:
            continue
        words = shlex.split(command.replace(";", " ; "))
        for i, word in enumerate(words):
            if word.startswith(f"--{name}="):
                return word.split("=", 1)[1]
            if word == f"--{name}" and i + 1 < len(words):
                return words[i + 1]
    return None


def head_resources(config: dict[str, Any]) -> dict[str, float]:
    """Resources the head advertises: the node type's, else its `ray start` flags (local provider)."""
    declared = dict(config["available_node_types"][config["head_node_type"]].get("resources", {}))
    gpus = flag(config["head_start_ray_commands"], "num-gpus")
    if gpus is not None:
        declared["GPU"] = int(gpus)
    return declared


def worker_resources(config: dict[str, Any]) -> list[dict[str, float]]:
    """Resources of each worker node type, with `ray start` flags applied as Ray would."""
    extra = json.loads(flag(config["worker_start_ray_commands"], "resources") or "{}")
    gpus = flag(config["worker_start_ray_commands"], "num-gpus")
    out = []
    for name, node_type in config["available_node_types"].items():
        if name == config["head_node_type"] and len(config["available_node_types"]) > 1:
            continue
        resources = {**node_type.get("resources", {}), **extra}
        if gpus is not None:
            resources["GPU"] = int(gpus)
        out.append(resources)
    return out


def carla_ports(commands: list[str]) -> list[list[int]]:
    """Port lists of every `for port in ...` loop in the worker setup."""
    return [[int(p) for p in m.group(1).split()]
            for c in commands for m in [re.search(r"for port in ([\d ]+);", c)] if m]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_ray_validator_accepts(path: Path) -> None:
    config = prepared(path)
    assert config["cluster_name"].startswith("carla-fleet")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("mutation", ["misspelled_key", "wrong_type", "unknown_node_key"])
def test_ray_validator_rejects_broken_copy(path: Path, mutation: str) -> None:
    # Proves the validator really runs on our files: each copy differs by one mistake.
    config = prepare_config(load(path))
    validate_config(copy.deepcopy(config))
    node_type = next(iter(config["available_node_types"].values()))
    if mutation == "misspelled_key":
        config["idle_timeout_minute"] = 5
    elif mutation == "wrong_type":
        node_type["resources"]["carla"] = "4"
    else:
        node_type["min_worker"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_config(config)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_head_has_the_learner_gpu(path: Path) -> None:
    assert head_resources(prepared(path)).get("GPU", 0) >= 1


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_workers_advertise_carla_and_hide_their_gpu(path: Path) -> None:
    workers = worker_resources(prepared(path))
    carla = [r for r in workers if "carla" in r]
    assert carla, "no worker node type advertises the `carla` resource"
    for resources in carla:
        assert isinstance(resources["carla"], int) and resources["carla"] > 0
        # A GPU advertised here would let Ray place the learner beside CARLA.
        assert resources.get("GPU") == 0


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_one_carla_unit_per_started_server(path: Path) -> None:
    config = prepared(path)
    loops = carla_ports(config["worker_setup_commands"])
    assert len(loops) == 2, "expected a start loop and a readiness loop"
    start, ready = loops
    assert start == ready
    assert len(set(start)) == len(start)
    # Each server also takes PORT+1 and PORT+2.
    assert all(b - a >= 3 for a, b in zip(sorted(start), sorted(start)[1:]))
    hosts = next(c for c in config["worker_setup_commands"] if "CARLA_HOSTS=" in c)
    listed = re.search(r"CARLA_HOSTS=([\w.:,]+)", hosts).group(1).split(",")
    assert [int(h.rsplit(":", 1)[1]) for h in listed] == start
    assert all(h.rsplit(":", 1)[0] in ("localhost", "127.0.0.1") for h in listed)
    for resources in worker_resources(config):
        assert resources["carla"] == len(start)
    # The raylet, and so every actor on the node, must see CARLA_HOSTS.
    assert any("carla_hosts.env" in c and "ray start" in c for c in config["worker_start_ray_commands"])


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_carla_image_matches_client(path: Path) -> None:
    pinned = re.search(r'"carla==([\d.]+)', (ROOT / "pyproject.toml").read_text()).group(1)
    images = set(re.findall(r"carlasim/carla:([\w.]+)", path.read_text()))
    assert images == {pinned}, "the CARLA server and the Python client must be the same release"
    runs = [c for c in load(path)["worker_setup_commands"] if "docker run" in c]
    assert runs and all("--gpus" in c and "-RenderOffScreen" in c for c in runs)
    # The rollout worker on the node reaches its servers on localhost: the containers publish their ports
    # (RPC, streaming, secondary) on loopback only, never on the host's network (--net=host).
    assert all("--net=host" not in c and "--network" not in c for c in runs)
    assert all("-p 127.0.0.1:$port-$((port + 2)):$port-$((port + 2))" in c for c in runs)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_node_ray_matches_local_ray(path: Path) -> None:
    # `ray up` and `ray job submit` refuse or misbehave across Ray versions.
    pins = dict(re.findall(r'"(ray|torch)(?:\[[\w,]+\])?==([\w.]+)"', path.read_text()))
    assert pins.get("ray") == importlib.metadata.version("ray")
    assert pins.get("torch") == importlib.metadata.version("torch").split("+")[0]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_dashboard_not_public(path: Path) -> None:
    config = prepared(path)
    assert flag(config["head_start_ray_commands"], "dashboard-host") in ("127.0.0.1", "localhost")
    assert "0.0.0.0" not in path.read_text()
    groups = [config["provider"].get("security_group", {})]
    for rule in (r for g in groups for r in g.get("IpPermissions", [])):
        ports = set(range(rule.get("FromPort", 0), rule.get("ToPort", 65535) + 1))
        world = any(r.get("CidrIp") == "0.0.0.0/0" for r in rule.get("IpRanges", []))
        assert not (world and ports & PRIVATE_PORTS), rule


@pytest.mark.parametrize("path", [*FILES, DOCS], ids=lambda p: p.name)
def test_no_secrets(path: Path) -> None:
    text = path.read_text()
    for pattern in SECRET_PATTERNS:
        assert not pattern.search(text), f"{path.name} matches {pattern.pattern}"


def test_aws_nodes_use_instance_profiles_not_keys() -> None:
    config = load(AWS)
    workers = [t for n, t in config["available_node_types"].items() if n != config["head_node_type"]]
    assert all("IamInstanceProfile" in t["node_config"] for t in workers)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_worker_counts(path: Path) -> None:
    config = prepared(path)
    types = config["available_node_types"]
    for name, node_type in types.items():
        assert 0 <= node_type.get("min_workers", 0) <= node_type.get("max_workers", config["max_workers"]), name
    assert sum(t.get("min_workers", 0) for t in types.values()) <= config["max_workers"]
    if config["provider"]["type"] == "local":
        # Ray 2.60's autoscaler counts the head among the local node type: every listed machine starts only
        # when that type's minimum is the worker machines plus the head (docs/cluster.md, "One machine").
        raw = load(path)
        node_type = raw["available_node_types"]["local.cluster.node"]
        assert node_type["min_workers"] == node_type["max_workers"] == len(raw["provider"]["worker_ips"]) + 1
        assert raw["max_workers"] == node_type["max_workers"]
        assert raw["worker_setup_commands"][:len(raw["head_setup_commands"])] == raw["head_setup_commands"] or \
            raw["head_setup_commands"] == raw["worker_setup_commands"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_commands_parse_as_bash(path: Path) -> None:
    config = prepared(path)
    keys = ["head_setup_commands", "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands"]
    for command in (c for k in keys for c in config[k]):
        # Ray wraps each command in a subshell of an interactive login shell.
        result = subprocess.run(["bash", "-n", "-c", f"({command})"], capture_output=True, text=True)
        assert result.returncode == 0, f"{command!r}: {result.stderr}"


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_every_node_asks_for_the_token(path: Path) -> None:
    """Ray 2.60 turns token authentication on at `ray start` only when told (or when a token file exists):
    every node starts with RAY_AUTH_MODE=token, the token reaches every node as a file mount from the
    machine that runs `ray up` (never from the checkout), mode 0600."""
    config = prepared(path)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c or "loopback_node.sh start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), key
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert "chmod 600 ~/.ray/auth_token" in " ".join(config[key]), key
    assert "RAY_AUTH_MODE=disabled" not in path.read_text()


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_a_stopped_job_has_time_for_its_final_snapshot(path: Path) -> None:
    """`ray job stop` sends SIGKILL RAY_JOB_STOP_WAIT_TIME_S after SIGTERM (3 s by default); the run needs
    more to write its final snapshot (docs/cluster.md: measured by `make cluster-check`)."""
    head = " ".join(prepared(path)["head_start_ray_commands"])
    wait = re.search(r"RAY_JOB_STOP_WAIT_TIME_S=(\d+)", head)
    assert wait and int(wait.group(1)) >= 30


def test_loopback_yaml_validates_and_parses() -> None:
    config = prepared(LOOPBACK)
    assert config["provider"] == {"type": "local", "head_ip": "127.0.0.1", "worker_ips": ["127.0.0.2", "127.0.0.3"]}
    keys = ["head_setup_commands", "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands"]
    for command in (c for k in keys for c in config[k]):
        result = subprocess.run(["bash", "-n", "-c", f"({command})"], capture_output=True, text=True)
        assert result.returncode == 0, f"{command!r}: {result.stderr}"
    # A node's start stops only that node: `ray stop` would stop every node of the machine's user.
    assert not any("ray stop" in c for k in keys for c in config[k])
    assert all("loopback_node.sh start" in " ".join(config[k]) for k in keys[2:])


def test_loopback_differs_from_onprem_only_where_one_machine_forces_it() -> None:
    """cluster/loopback.yaml is what `make cluster-check` brings up for real: it must stay onprem.yaml but for
    the addresses, the SSH user and key, the environment and the start commands (its header says why)."""
    onprem, loop = load(ONPREM), load(LOOPBACK)
    allowed = {"cluster_name", "provider", "auth", "head_setup_commands", "worker_setup_commands",
               "head_start_ray_commands", "worker_start_ray_commands"}
    assert set(onprem) == set(loop)
    differing = {k for k in onprem if onprem[k] != loop[k]}
    assert differing <= allowed, differing - allowed
    assert onprem["provider"]["type"] == loop["provider"]["type"] == "local"
    assert len(onprem["provider"]["worker_ips"]) == len(loop["provider"]["worker_ips"])
    # The same start settings on both: the GCS caps, token auth, the job stop wait, the dashboard on loopback.
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for setting in re.findall(r"RAY_\w+=\w+", " ".join(onprem[key])):
            assert setting in " ".join(loop[key]), (key, setting)
    assert "--dashboard-host=127.0.0.1" in " ".join(loop["head_start_ray_commands"])
    # The workers advertise `carla` in both; the loopback head has the `learner` resource in place of a GPU.
    assert '"carla": 4' in " ".join(loop["worker_start_ray_commands"])
