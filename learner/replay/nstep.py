"""n-step targets, folded in as steps arrive, per worker stream.

A step's target sums up to n rewards of its own episode segment: ret = sum gamma^k r_k,
discount = gamma^n (0 if the episode terminated inside the window), bootstrapping from the next
observation of the window's last step. The steps whose window is still open wait in their
stream's `pending` list. A step becomes sampleable once its window is complete: n steps seen, or
the segment ended (terminated; truncated; or cut by an env failure, a lost chunk or a rejected
NaN step, which all bootstrap from the last step's next observation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from learner.replay.rings import Rings


@dataclass
class Stream:
    """What the replay remembers of one worker stream between its chunks."""

    seq: int = -1
    carry: list[int] = field(default_factory=list)  # global ids of the stream's last K frames
    in_episode: bool = False  # the stream's env episode is open and its frames are known
    episode: int = -1  # id of the open episode segment, -1 when none is open
    last: int = -1  # global id of the open segment's last step
    pending: list[list] = field(default_factory=list)  # [step id, steps summed, discounted sum]


class NStepFolder:
    """Writes each step's n-step target into the rings (`ret`, `discount`, `boot`, `complete`)."""

    def __init__(self, rings: Rings, gamma: float, n_step: int) -> None:
        self.rings, self.gamma, self.n_step = rings, gamma, n_step
        self.streams: dict[int, Stream] = {}
        self.episodes = 0
        """Episode segments opened so far (each step's `episode` id)."""

    def fold(self, st: Stream, ids: np.ndarray, rewards: list[float], terms: list[bool], ends: list[bool],
             starts: np.ndarray) -> list[int]:
        """Fold new steps (global `ids`, each opening a segment where `starts`) into n-step targets;
        returns the slots whose window completed."""
        gamma, nstep, cap = self.gamma, self.n_step, self.rings.capacity
        done: list[int] = []
        for i, step in enumerate(ids.tolist()):
            if starts[i]:
                self.close(st, done)
                self.episodes += 1
                st.episode = self.episodes - 1
            self.rings.episode[step % cap] = st.episode
            st.pending.append([step, 0, 0.0])
            r = rewards[i]
            for p in st.pending:
                p[2] += gamma ** p[1] * r
                p[1] += 1
            if ends[i] or st.pending[0][1] == nstep:
                finished = st.pending if ends[i] else st.pending[:1]
                self._finish(finished, step, 0.0 if terms[i] else 1.0, done)
                st.pending = [] if ends[i] else st.pending[1:]
            st.last = step
            if ends[i]:
                st.episode, st.last = -1, -1
        return done

    def close(self, st: Stream, done: list[int] | None = None) -> list[int]:
        """End the stream's open segment where it stands: its steps bootstrap from the last one.
        Returns the slots completed (appended to `done` too, when given)."""
        out: list[int] = [] if done is None else done
        if st.pending:
            self._finish(st.pending, st.last, 1.0, out)
        st.pending, st.episode, st.last = [], -1, -1
        return out

    def _finish(self, pending: list[list], boot: int, alive: float, done: list[int]) -> None:
        r = self.rings
        cap, low = r.capacity, r.steps_written - r.capacity
        for step, k, total in pending:
            if step < low:
                continue  # its slot already holds a newer step
            s = step % cap
            r.ret[s] = total
            r.discount[s] = self.gamma ** k * alive
            r.boot[s] = boot
            r.complete[s] = True
            done.append(s)
            r.mark("steps", [s])
