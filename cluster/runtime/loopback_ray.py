"""Ray's services on loopback: keep a node IP of 127.0.0.1 from being replaced by the machine's address.

Ray 2.60 binds its gRPC servers (GCS, raylet, object manager, core workers, agents, metrics) to
127.0.0.1 only when a node's IP is exactly 127.0.0.1, and to every interface for any other IP,
127.0.0.2 included. `ray.init`, `ray start` and every client that takes a GCS address replace
127.0.0.1 with the machine's routable address (`ray._private.services.resolve_ip_for_localhost`),
which puts every service on the machine's network interface. `install()` makes that function keep
127.0.0.0/8 addresses as they are. Two users:

- `cluster.runtime.ray_setup.init_ray` for the one-node Ray instance a local `fleet train` or `fleet evaluate`
  starts: every listener of that instance is then on 127.0.0.1 (tests/test_ray_auth.py);
- `make cluster-check` (cluster/cluster_check.py) copies this file into the check cluster's own
  environment and imports it from a .pth file, so it runs in every Python process of that cluster;
  the nodes are told apart by their SSH address (127.0.0.1-3), temp dir and ports, as the nodes of
  ray.cluster_utils.Cluster are.

It imports nothing of carla-fleet, so it can run on its own in that environment. With a Ray that has
no such function it does nothing (`install()` returns False).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

TARGET = "ray._private.services"


_DEFAULT_TO_LOOPBACK = False


def _default_to_loopback(module: ModuleType) -> None:
    """A node started in this process without an IP (ray.cluster_utils.Cluster, ray.init) takes 127.0.0.1,
    not the address Ray would route towards the internet from."""
    original = getattr(module, "node_ip_address_from_perspective", None)
    if original is None or getattr(original, "_keeps_loopback", False):
        return

    def node_ip_address_from_perspective(address: str | None = None) -> str:
        return "127.0.0.1" if address is None else original(address)

    node_ip_address_from_perspective._keeps_loopback = True  # type: ignore[attr-defined]
    module.node_ip_address_from_perspective = node_ip_address_from_perspective


def _keep_loopback(module: ModuleType) -> None:
    original = getattr(module, "resolve_ip_for_localhost", None)
    if original is None:
        return

    def resolve_ip_for_localhost(host: str) -> str:
        if host and (host == "localhost" or host.startswith("127.")):
            return "127.0.0.1" if host == "localhost" else host
        return original(host)

    resolve_ip_for_localhost._keeps_loopback = True  # type: ignore[attr-defined]
    module.resolve_ip_for_localhost = resolve_ip_for_localhost
    if _DEFAULT_TO_LOOPBACK:
        _default_to_loopback(module)


class _Finder(importlib.abc.MetaPathFinder):
    """Patches `ray._private.services` right after it is first executed; imports nothing before."""

    def find_spec(self, fullname, path, target=None):  # noqa: ANN001 - the import protocol's signature
        if fullname != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def patched_exec(module: ModuleType) -> None:
            exec_module(module)
            _keep_loopback(module)

        loader.exec_module = patched_exec  # type: ignore[method-assign]
        return spec


def install(default_to_loopback: bool = False) -> bool:
    """Keep loopback node IPs in this process: now when Ray's module is loaded, else when it is.

    `default_to_loopback`: also give 127.0.0.1 to a node started here without an IP (one-machine
    clusters of tests and of `fleet bench scale`, whose `ray.cluster_utils.Cluster` takes no IP)."""
    global _DEFAULT_TO_LOOPBACK
    _DEFAULT_TO_LOOPBACK = _DEFAULT_TO_LOOPBACK or default_to_loopback
    if TARGET in sys.modules:
        module = sys.modules[TARGET]
        if not hasattr(module, "resolve_ip_for_localhost"):
            return False
        if not getattr(module.resolve_ip_for_localhost, "_keeps_loopback", False):
            _keep_loopback(module)
        elif _DEFAULT_TO_LOOPBACK:
            _default_to_loopback(module)
        return True
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    return True
