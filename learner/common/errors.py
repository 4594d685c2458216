"""The one root of carla-fleet's own errors, and its kinds.

It lives in `learner/`, the package at the bottom of the import graph, so that every other
package can raise these without importing upward. The command line turns any `FleetError`
into one line on stderr and exit status 2 (`cluster/cli/__init__.py`); Python's built-in bases are kept
beside it (`ValueError`, `KeyError`, ...) so code that catches those keeps working.
"""

from __future__ import annotations


class FleetError(Exception):
    """Something the user can act on: bad input, a config, a store, a simulator or a state that does
    not fit. The message says what is wrong and what to do."""


class UserError(FleetError):
    """A problem with the user's input found by a command itself (a flag, a path)."""


class ConfigError(FleetError, ValueError):
    """A config value or key is invalid; the message names the dotted key."""


class StoreError(FleetError):
    """The snapshot store: a URI that cannot be opened, a missing version, bytes that do not
    verify or decode, a failed save, a legacy file that cannot be imported."""


class SimulatorError(FleetError, RuntimeError):
    """The simulator hung, died or could not be reached.

    Raised by adapters for every timeout or lost connection; a rollout worker answers it by
    closing the episode as truncated and recreating the env (for CARLA: restarting its server),
    never by ending the run. Reaches the command line only from a setup that never worked."""


class StateError(FleetError, KeyError):
    """A state does not fit the agent: names every missing, extra or mis-shaped key."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])
