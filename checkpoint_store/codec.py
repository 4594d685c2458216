"""One state component <-> a JSON skeleton plus a safetensors blob. Nothing is ever pickled.

A component is a nested value whose leaves are tensors or JSON values. Every
tensor goes into one safetensors file under a flat key; the skeleton is the same
tree with each tensor replaced by `{"$tensor": key}`. Tuples and dicts with
non-string keys are tagged (`{"$tuple": [...]}`, `{"$items": [[k, v], ...]}`) so
that they come back as they went in; string keys such as optimizer parameter ids
("0", "1") stay strings. Python's json keeps ints of any size and floats exactly.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from learner.common.errors import StoreError

TENSOR, TUPLE, ITEMS = "$tensor", "$tuple", "$items"
_TAGS = {TENSOR, TUPLE, ITEMS}


class CodecError(StoreError, ValueError):
    """A state leaf cannot be stored, or stored bytes do not decode; names the dotted path."""


def _as_tensor(leaf: Any) -> torch.Tensor:
    if isinstance(leaf, np.ndarray):
        # Arrays arrive read-only from Ray's shared memory; safetensors only reads them.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            leaf = torch.from_numpy(leaf)
    t = leaf.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if not t.is_contiguous() or t.untyped_storage().nbytes() != t.nbytes:
        t = t.contiguous().clone()  # safetensors refuses views into a larger or shared storage
    return t


def encode(value: Any) -> tuple[bytes, bytes | None]:
    """(skeleton JSON bytes, safetensors bytes or None when the component holds no tensor)."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode_tree(value, [], tensors)
    skel = json.dumps(skeleton, sort_keys=False, separators=(",", ":"), allow_nan=True).encode()
    blob = st_save(tensors) if tensors else None
    # The tensors may view Ray's shared memory (the writer's zero-copy `ray.get`): drop them now.
    tensors.clear()
    return skel, blob


# Module-level recursion, not a nested closure: a closure that calls itself is a reference cycle,
# and the cycle kept every tensor of the component -- pinned shared-memory objects in the
# checkpoint writer -- alive until the next full garbage collection.
def _encode_tree(v: Any, path: list[str], tensors: dict[str, torch.Tensor]) -> Any:
    where = ".".join(path) or "<root>"
    if isinstance(v, (torch.Tensor, np.ndarray)):
        key = where
        n = 1
        while key in tensors:  # keys containing dots could collide once joined
            key, n = f"{where}#{n}", n + 1
        tensors[key] = _as_tensor(v)
        return {TENSOR: key}
    if isinstance(v, dict):
        if all(isinstance(k, str) for k in v):
            if len(v) == 1 and next(iter(v)) in _TAGS:
                raise CodecError(f"{where}: a dict whose only key is {next(iter(v))!r} is reserved")
            return {k: _encode_tree(x, [*path, k], tensors) for k, x in v.items()}
        for k in v:
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise CodecError(f"{where}: dict key {k!r} of type {type(k).__name__} cannot be stored")
        return {ITEMS: [[k, _encode_tree(x, [*path, str(k)], tensors)] for k, x in v.items()]}
    if isinstance(v, tuple):
        return {TUPLE: [_encode_tree(x, [*path, str(i)], tensors) for i, x in enumerate(v)]}
    if isinstance(v, list):
        return [_encode_tree(x, [*path, str(i)], tensors) for i, x in enumerate(v)]
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, np.generic):
        return v.item()
    raise CodecError(f"{where}: cannot store a {type(v).__name__} (only tensors and JSON values)")


def decode(skeleton: bytes, tensor_bytes: bytes | None) -> Any:
    """Inverse of `encode`: tensors come back on the CPU, bit for bit."""
    try:
        tree = json.loads(skeleton)
        tensors = st_load(tensor_bytes) if tensor_bytes is not None else {}
    except (ValueError, SafetensorError) as exc:
        raise CodecError(f"stored component does not decode: {exc}") from exc
    except RecursionError as exc:
        raise CodecError("stored component does not decode: its skeleton JSON nests too deeply") from exc
    try:
        return _decode_tree(tree, tensors)
    except RecursionError as exc:
        raise CodecError("stored component does not decode: its skeleton nests too deeply") from exc
    except (TypeError, ValueError) as exc:  # e.g. {"$tuple": 5}, {"$items": [1]}, {"$tensor": []}
        raise CodecError(f"stored component does not decode: its skeleton is malformed ({exc})") from exc


def _decode_tree(v: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(v, dict):
        if len(v) == 1:
            tag, inner = next(iter(v.items()))
            if tag == TENSOR:
                if inner not in tensors:
                    raise CodecError(f"skeleton names tensor {inner!r} missing from the tensor blob")
                return tensors[inner]
            if tag == TUPLE:
                return tuple(_decode_tree(x, tensors) for x in inner)
            if tag == ITEMS:
                return {k: _decode_tree(x, tensors) for k, x in inner}
        return {k: _decode_tree(x, tensors) for k, x in v.items()}
    if isinstance(v, list):
        return [_decode_tree(x, tensors) for x in v]
    return v
