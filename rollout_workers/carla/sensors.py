"""Sensor data matched to simulator ticks, and camera frames turned into contract images.

CARLA delivers sensor data on its own threads, possibly late, possibly after
data from an earlier tick. Each sensor callback only enqueues; the env thread
then asks for the data of the frame id that `world.tick()` returned, drops
anything older, and keeps anything newer for the next tick.
"""

from __future__ import annotations

import logging
import queue
import time
from typing import Any

import numpy as np

from rollout_workers.contract import IMAGE_SIZE, SimulatorError

log = logging.getLogger(__name__)


class FrameQueue:
    """Thread-safe inbox for one sensor; `put` is the sensor's `listen` callback."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._q: queue.Queue[Any] = queue.Queue()
        self._ahead: list[Any] = []
        self.stale_dropped = 0

    def put(self, data: Any) -> None:
        self._q.put(data)

    def get(self, frame: int, timeout_s: float, where: str) -> Any:
        """The data of exactly `frame`; older data is dropped. SimulatorError if it does not come in time."""
        for i, item in enumerate(self._ahead):
            if item.frame == frame:
                return self._ahead.pop(i)
        deadline = time.monotonic() + timeout_s
        remaining = max(timeout_s, 1e-3)
        while remaining > 0:
            try:
                item = self._q.get(timeout=remaining)
            except queue.Empty:
                break
            if item.frame == frame:
                return item
            if item.frame < frame:
                self.stale_dropped += 1
                log.debug("%s: dropped stale frame %d (waiting for %d)", self.name, item.frame, frame)
            else:
                self._ahead.append(item)
            remaining = deadline - time.monotonic()
        raise SimulatorError(
            f"CARLA server {where}: no {self.name} data for frame {frame} within {timeout_s:.1f}s "
            f"(the server may be overloaded or hung)"
        )

    def events_until(self, frame: int, since: int) -> list[Any]:
        """Non-blocking: every event with since < event.frame <= frame; later ones are kept.

        Event sensors (collision, lane invasion) fire only when something
        happens, so there is nothing to wait for; an event that arrives one
        tick late still happened in this episode and is counted then.
        """
        pending = self._ahead + self._drain()
        self._ahead = []
        out = []
        for item in pending:
            if item.frame > frame:
                self._ahead.append(item)
            elif item.frame > since:
                out.append(item)
            else:
                self.stale_dropped += 1
        return out

    def clear(self) -> None:
        self._ahead = []
        self._drain()

    def _drain(self) -> list[Any]:
        # Bounded by what is queued now, so a sensor that keeps producing cannot hold us here.
        items = []
        for _ in range(self._q.qsize()):
            try:
                items.append(self._q.get_nowait())
            except queue.Empty:
                break
        return items


def to_gray84(raw_bgra: bytes | memoryview, height: int, width: int) -> np.ndarray:
    """A CARLA BGRA image (`image.raw_data`) to uint8 (84, 84) luma (ITU-R 601 weights)."""
    px = np.frombuffer(raw_bgra, dtype=np.uint8).reshape(height, width, 4)
    gray = 0.114 * px[..., 0] + 0.587 * px[..., 1] + 0.299 * px[..., 2]
    if (height, width) != (IMAGE_SIZE, IMAGE_SIZE):
        # Nearest-neighbour sampling: cheap, and cameras are normally configured at 84x84 already.
        rows = (np.arange(IMAGE_SIZE) * height) // IMAGE_SIZE
        cols = (np.arange(IMAGE_SIZE) * width) // IMAGE_SIZE
        gray = gray[rows][:, cols]
    return np.clip(np.rint(gray), 0, 255).astype(np.uint8)
