"""One registry of everything an agent must save to continue bit-for-bit.

A hand-kept list of attribute names to checkpoint silently loses whatever is added
without updating it (a network's weights, an optimizer). Here every stateful object
is registered once, where it is created, and `state()` / `load_state()` iterate
that registry; a test checks that no module or optimizer attribute escapes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from learner.common.errors import StateError  # noqa: F401  (raised here; importers use this name)

State = dict[str, Any]
"""Nested dict whose leaves are tensors or JSON values (str, int, float, bool, None, lists)."""


class Part(Protocol):
    def state(self, copy: bool = True) -> Any: ...
    def load(self, state: Any) -> None: ...
    def problems(self, state: Any, name: str) -> list[str]: ...


class ModulePart:
    def __init__(self, module: nn.Module) -> None:
        self.obj = module

    def state(self, copy: bool = True) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() if copy else v.detach() for k, v in self.obj.state_dict().items()}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        self.obj.load_state_dict(state, strict=True)

    def problems(self, state: Any, name: str) -> list[str]:
        if not isinstance(state, dict):
            return [f"{name}: expected a dict of tensors, got {type(state).__name__}"]
        own = self.obj.state_dict()
        out = [f"missing key {name}.{k}" for k in own if k not in state]
        out += [f"unexpected key {name}.{k}" for k in state if k not in own]
        for k, v in own.items():
            if k in state and tuple(getattr(state[k], "shape", ())) != tuple(v.shape):
                got = tuple(getattr(state[k], "shape", ()))
                out.append(f"shape mismatch at {name}.{k}: snapshot {list(got)}, agent {list(v.shape)}")
        return out


IMPLEMENTATION_KEYS = ("fused", "foreach", "capturable", "differentiable")
"""Optimizer param-group keys that choose an implementation, not the math."""


class OptimizerPart:
    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.obj = optimizer

    def state(self, copy: bool = True) -> dict[str, Any]:
        sd = self.obj.state_dict()
        keep = _clone if copy else _detach
        # Integer parameter ids become strings so the state is JSON-shaped; load restores them.
        return {
            "state": {str(i): {k: keep(v) for k, v in s.items()} for i, s in sd["state"].items()},
            "param_groups": [dict(g) for g in sd["param_groups"]],
        }

    def load(self, state: dict[str, Any]) -> None:
        # Which kernel runs the step (fused, foreach, ...) is this process's choice, not the snapshot's:
        # a state saved by a fused optimizer loads into a plain one and the other way round.
        groups = [{**saved, **{k: live[k] for k in IMPLEMENTATION_KEYS if k in live}}
                  for saved, live in zip(state["param_groups"], self.obj.param_groups)]
        # torch keeps the given tensors when dtype and device already fit, and then steps them in place:
        # without the clone, two agents loaded from one state would share (and both advance) its moments.
        per_param = {int(i): {k: _clone(v) for k, v in s.items()} for i, s in state["state"].items()}
        self.obj.load_state_dict({"state": per_param, "param_groups": groups})

    def problems(self, state: Any, name: str) -> list[str]:
        if not isinstance(state, dict) or set(state) != {"state", "param_groups"}:
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            return [f"{name}: expected keys ['param_groups', 'state'], got {keys}"]
        params = [p for g in self.obj.param_groups for p in g["params"]]
        groups = state["param_groups"]
        sizes = [len(g.get("params", [])) for g in groups]
        if sizes != [len(g["params"]) for g in self.obj.param_groups]:
            return [f"{name}: parameter groups hold {sizes} parameters, agent has "
                    f"{[len(g['params']) for g in self.obj.param_groups]}"]
        out = []
        for idx, per_param in state["state"].items():
            i = int(idx)
            if i >= len(params):
                out.append(f"unexpected key {name}.state.{idx}")
                continue
            for k, v in per_param.items():
                if isinstance(v, torch.Tensor) and v.dim() > 0 and tuple(v.shape) != tuple(params[i].shape):
                    out.append(f"shape mismatch at {name}.state.{idx}.{k}: snapshot {list(v.shape)}, "
                               f"parameter {list(params[i].shape)}")
        return out


class TorchGeneratorPart:
    def __init__(self, generator: torch.Generator) -> None:
        self.obj = generator

    def state(self, copy: bool = True) -> torch.Tensor:
        return self.obj.get_state().clone()

    def load(self, state: torch.Tensor) -> None:
        self.obj.set_state(state.to(torch.uint8).cpu())

    def problems(self, state: Any, name: str) -> list[str]:
        ok = isinstance(state, torch.Tensor) and state.shape == self.obj.get_state().shape
        return [] if ok else [f"{name}: not a generator state of shape {list(self.obj.get_state().shape)}"]


class NumpyGeneratorPart:
    def __init__(self, generator: np.random.Generator) -> None:
        self.obj = generator

    def state(self, copy: bool = True) -> dict[str, Any]:
        return _jsonable(self.obj.bit_generator.state)

    def load(self, state: dict[str, Any]) -> None:
        self.obj.bit_generator.state = state

    def problems(self, state: Any, name: str) -> list[str]:
        kind = self.obj.bit_generator.state["bit_generator"]
        ok = isinstance(state, dict) and state.get("bit_generator") == kind
        return [] if ok else [f"{name}: not a {kind} bit-generator state"]


class Counter:
    """A mutable integer that lives in the registry (e.g. the update counter)."""

    def __init__(self, value: int = 0) -> None:
        self.value = value

    def state(self, copy: bool = True) -> int:
        return self.value

    def load(self, state: int) -> None:
        self.value = int(state)

    def problems(self, state: Any, name: str) -> list[str]:
        ok = isinstance(state, int) and not isinstance(state, bool) and state >= 0
        return [] if ok else [f"{name}: expected a non-negative integer, got {state!r}"]


def _clone(v: Any) -> Any:
    return v.detach().clone() if isinstance(v, torch.Tensor) else v


def _detach(v: Any) -> Any:
    return v.detach() if isinstance(v, torch.Tensor) else v


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, np.integer):
        return int(v)
    return v


def wrap(obj: Any) -> Part:
    if isinstance(obj, nn.Module):
        return ModulePart(obj)
    if isinstance(obj, torch.optim.Optimizer):
        return OptimizerPart(obj)
    if isinstance(obj, torch.Generator):
        return TorchGeneratorPart(obj)
    if isinstance(obj, np.random.Generator):
        return NumpyGeneratorPart(obj)
    if isinstance(obj, Counter):
        return obj
    raise TypeError(f"no state adapter for {type(obj).__name__}")


class Registry:
    """Named stateful parts, in registration order."""

    def __init__(self) -> None:
        self._parts: dict[str, Part] = {}

    def add(self, name: str, obj: Any) -> Any:
        if name in self._parts:
            raise ValueError(f"state part {name!r} registered twice")
        self._parts[name] = wrap(obj)
        return obj

    def names(self) -> list[str]:
        return list(self._parts)

    def objects(self) -> Iterator[Any]:
        for part in self._parts.values():
            yield getattr(part, "obj", part)

    def state(self, copy: bool = True) -> State:
        """Every part's state. copy=False gives views of live tensors, valid until the next update
        (for a caller that copies at once, such as `ray.put`)."""
        return {name: part.state(copy) for name, part in self._parts.items()}

    def problems(self, state: State) -> list[str]:
        out = [f"missing part {n}" for n in self._parts if n not in state]
        out += [f"unexpected part {n}" for n in state if n not in self._parts]
        for name, part in self._parts.items():
            if name in state:
                out.extend(part.problems(state[name], name))
        return out

    def load_state(self, state: State) -> None:
        """Strict: every part present, nothing extra, every tensor the right shape."""
        problems = self.problems(state)
        if problems:
            raise StateError("state does not fit this agent: " + "; ".join(problems))
        for name, part in self._parts.items():
            part.load(state[name])
