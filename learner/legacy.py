"""Read a `.pth` checkpoint of the system this project replaces into a `TD3Agent` (`fleet import-legacy`
then writes it to a store as a version: cluster/cli/import_legacy.py).

The old checkpoint is a dict: `actor_state_dict`, `critic_state_dict`,
`actor_cnn_state_dict`, `critic_cnn_state_dict`, `actor_optimizer_state_dict`,
`critic_optimizer_state_dict`, optionally `actor_cnn_optimizer_state_dict` and
`critic_cnn_optimizer_state_dict`, `total_it`, `config` and hyper-parameters.
It is read with `torch.load(weights_only=True)`, so nothing is unpickled beyond
tensors and plain containers. Its known bug: the CNN weights were often missing
or None; such a file is refused unless the caller accepts fresh CNNs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from learner.common.errors import StoreError
from learner.networks import NetworkConfig
from learner.td3 import NETWORKS, TD3Agent, TD3Config

log = logging.getLogger(__name__)

FEATURE_DIM = 512
_HPARAMS = {"discount": ("gamma",), "gamma": ("gamma",), "tau": ("tau",), "policy_freq": ("policy_freq",),
            "policy_noise": ("policy_noise",), "noise_clip": ("noise_clip",), "batch_size": ("batch_size",),
            "lr": ("actor_lr", "critic_lr"), "actor_lr": ("actor_lr",), "critic_lr": ("critic_lr",)}


class LegacyImportError(StoreError, ValueError):
    """The legacy file cannot be imported; the message says why and what to do."""


@dataclass(frozen=True)
class LegacyImport:
    agent: TD3Agent
    notes: list[str]
    config: dict[str, Any]


def load_legacy(path: str | Path, allow_missing_cnn: bool = False) -> LegacyImport:
    """Build a CPU TD3Agent holding the legacy checkpoint's networks and optimizer states."""
    path = Path(path)
    if not path.is_file():
        raise LegacyImportError(f"{path} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise LegacyImportError(f"{path} is empty: expected a torch checkpoint (.pth) of the old system")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types (UnpicklingError, RuntimeError, ...)
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise LegacyImportError(
            f"{path} is not a readable torch checkpoint of plain tensors ({type(exc).__name__}"
            f"{': ' + detail if len(detail) > 8 else ''}); expected the .pth file the old system saved") from exc
    if not isinstance(ckpt, dict) or "actor_state_dict" not in ckpt:
        raise LegacyImportError(f"{path} is not a legacy TD3 checkpoint: no 'actor_state_dict' key "
                                f"(keys: {sorted(ckpt)[:12] if isinstance(ckpt, dict) else type(ckpt).__name__})")
    notes: list[str] = [f"imported from legacy checkpoint {path.name}"]
    missing_cnn = [f"{n}_cnn_state_dict" for n in ("actor", "critic") if not ckpt.get(f"{n}_cnn_state_dict")]
    if missing_cnn:
        if not allow_missing_cnn:
            raise LegacyImportError(
                f"{path}: the CNN weights are missing or None ({', '.join(missing_cnn)}), the known bug of the "
                "replaced system's checkpoints; its policy cannot be restored from this file. Re-run with "
                "--allow-missing-cnn to import it with freshly initialised CNNs (the actor and critic MLPs "
                "will not match those encoders)")
        notes.append(f"CNN weights absent in the file ({', '.join(missing_cnn)}): freshly initialised")

    try:
        vector_dim = ckpt["actor_state_dict"]["fc1.weight"].shape[1] - FEATURE_DIM
    except (KeyError, AttributeError, IndexError) as exc:
        raise LegacyImportError(f"{path}: actor_state_dict has no fc1.weight matrix") from exc
    if vector_dim < 3 or (vector_dim - 3) % 2:
        raise LegacyImportError(f"{path}: actor fc1 takes {vector_dim} vector inputs; expected 3 + 2 * waypoints")
    legacy_cfg = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    hp = {field: v for src in (legacy_cfg, ckpt) for k, v in src.items()
          if k in _HPARAMS and isinstance(v, (int, float)) and not isinstance(v, bool) for field in _HPARAMS[k]}
    agent = TD3Agent(TD3Config(device="cpu", **hp), NetworkConfig(waypoints=(vector_dim - 3) // 2))

    for name in NETWORKS:
        sd = ckpt.get(f"{name}_state_dict")
        if sd:
            _load(getattr(agent, name), sd, f"{name}_state_dict", path)
        target_sd = ckpt.get(f"{name}_target_state_dict")
        if target_sd:
            _load(getattr(agent, f"{name}_target"), target_sd, f"{name}_target_state_dict", path)
        else:
            getattr(agent, f"{name}_target").load_state_dict(getattr(agent, name).state_dict())
            notes.append(f"{name}_target copied from {name} (no target in the file)")
    for name in NETWORKS:
        key = f"{name}_optimizer_state_dict"
        osd = ckpt.get(key)
        if not osd:
            notes.append(f"{name}_optimizer: not in the file, fresh Adam state")
            continue
        problem = _optimizer_problem(getattr(agent, f"{name}_optimizer"), osd)
        if problem:
            notes.append(f"{name}_optimizer: not loaded ({problem}), fresh Adam state")
            continue
        getattr(agent, f"{name}_optimizer").load_state_dict(osd)
    agent.total_it.value = int(ckpt.get("total_it", 0))
    config = {"legacy": _jsonable(legacy_cfg), "hyperparameters": hp, "vector_dim": vector_dim}
    return LegacyImport(agent, notes, config)


def _load(module: torch.nn.Module, sd: Any, key: str, path: Path) -> None:
    try:
        module.load_state_dict(sd, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise LegacyImportError(f"{path}: {key} does not fit the seed architecture: {exc}") from exc


def _optimizer_problem(opt: torch.optim.Optimizer, osd: Any) -> str | None:
    """Why a legacy optimizer state cannot be loaded, or None; legacy param order = parameters() order."""
    if not isinstance(osd, dict) or "state" not in osd or "param_groups" not in osd:
        return "not an optimizer state dict"
    params = [p for g in opt.param_groups for p in g["params"]]
    ids = [i for g in osd["param_groups"] for i in g.get("params", [])]
    if len(ids) != len(params):
        return f"{len(ids)} parameters in the file, {len(params)} in the network"
    for i, p in zip(ids, params):
        for k, v in osd["state"].get(i, {}).items():
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape != p.shape:
                return f"state {k} of parameter {i} has shape {list(v.shape)}, parameter {list(p.shape)}"
    return None


def _jsonable(v: Any) -> Any:
    try:
        json.dumps(v)
        return v
    except (TypeError, ValueError):
        if isinstance(v, dict):
            return {str(k): _jsonable(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [_jsonable(x) for x in v]
        return repr(v)
