"""One error root: every exception class the packages define is a FleetError, and the CLI turns
any FleetError into one line on stderr and exit status 2."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import checkpoint_store
import cluster
import learner
import rollout_workers
from cluster import cli
from learner.common.errors import FleetError, SimulatorError, StoreError


def _modules():
    for pkg in (learner, rollout_workers, checkpoint_store, cluster):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if info.name.endswith("__main__"):
                continue
            yield importlib.import_module(info.name)


def test_every_exception_class_of_the_packages_derives_from_fleet_error():
    defined = {obj for mod in _modules() for _, obj in inspect.getmembers(mod, inspect.isclass)
               if issubclass(obj, BaseException) and obj.__module__ == mod.__name__}
    assert len(defined) >= 12
    assert sorted(c.__qualname__ for c in defined if not issubclass(c, FleetError)) == []


def test_builtin_bases_are_kept_for_code_that_catches_them():
    from checkpoint_store.store import IntegrityError, SnapshotNotFound
    from cluster.runtime.config import ConfigError
    from learner.state import StateError

    assert issubclass(IntegrityError, ValueError) and issubclass(IntegrityError, StoreError)
    assert issubclass(SnapshotNotFound, LookupError)
    assert issubclass(ConfigError, ValueError)
    assert issubclass(StateError, KeyError) and str(StateError("a b")) == "a b"


@pytest.mark.parametrize("exc", [SimulatorError("CARLA at 127.0.0.1:2000 does not answer"),
                                 StoreError("s3://bucket/x: no such bucket")])
def test_the_cli_prints_any_fleet_error_as_one_line_and_exits_2(exc, monkeypatch, capsys):
    def handler(_args):
        raise exc

    monkeypatch.setattr(cli.Commands, "command", _wrap(cli.Commands.command, handler))
    assert cli.main(["config"]) == 2
    err = capsys.readouterr().err
    assert err == f"fleet: error: {exc}\n"


def _wrap(command, handler):
    def patched(self, name, help, original):
        return command(self, name, help, handler if name == "config" else original)
    return patched
