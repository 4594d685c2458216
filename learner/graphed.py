"""The TD3 update replayed as CUDA graphs: the GPU path of `TD3Agent.update`.

On a GPU one eager update is several hundred small kernel launches (convolutions, the MLP heads,
Adam over 40 parameter tensors, the Polyak averages); at batch 256 launching them costs more than
running them. Captured once, a whole update is one `CUDAGraph.replay()`.

What the capture needs, and how `GraphedUpdate` provides it:
- fixed addresses: every batch is copied into static device buffers the graph reads
  (`Batch.weight` None becomes a buffer of ones: the same loss as `ones_like`);
- no host work inside: the target-policy noise is drawn by the agent from its own generator before
  the replay and copied in, so the noise stream is the eager path's; the update counter and the
  choice of graph (critic step, or critic + actor + targets every `policy_freq`) stay in Python;
- optimizers that step on the device: fused Adam with `capturable=True` (`TD3Agent` builds them so
  when it runs on CUDA with `agent.cuda_graphs`);
- warm-up: each of the two update kinds runs eagerly on a side stream its first `warmup` times (real
  updates: they also create the optimizers' state, which a capture would otherwise record as zero
  fills that reset Adam's moments at every replay), then is captured and replayed from then on;
- `reset()` after a state load: loading replaces the optimizers' moment tensors the graphs read.

Without a GPU (`capture=False`) the same static-buffer path runs eagerly: that is what the CPU tests
check against the plain reference update (same math, same state keys); a test that runs only where
CUDA is present checks the captured path against the eager one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from learner.replay.batch import Batch

Metrics = dict[str, torch.Tensor]
UpdateBody = Callable[[Batch, torch.Tensor, bool], Metrics]
"""One update of either kind: (batch, target-policy noise, actor_step) -> metrics; no host work inside."""
Optimizers = Callable[[bool], dict[str, torch.optim.Optimizer]]
"""The optimizers, by name, that an update kind (actor_step) steps."""


class GraphedUpdate:
    """Runs an update body through static buffers, captured as one CUDA graph per update kind.

    It takes the body, the optimizers each kind steps and the device; it knows nothing of the agent
    (`TD3Agent` builds one with its `update_body` and `update_optimizers`)."""

    def __init__(self, body: UpdateBody, optimizers: Optimizers, device: torch.device,
                 capture: bool | None = None, warmup: int = 3) -> None:
        self.body, self.optimizers, self.device = body, optimizers, device
        self.capture = device.type == "cuda" if capture is None else capture
        if self.capture and device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, the agent is on {device}")
        self.warmup = warmup
        self.reset()

    def reset(self) -> None:
        """Drop the graphs and buffers (after the agent's state was loaded); the next updates warm up anew."""
        self.graphs: dict[bool, tuple[torch.cuda.CUDAGraph, Metrics]] = {}
        self.static: Batch | None = None
        self.noise: torch.Tensor | None = None
        self.eager_left = {kind: self.warmup if self.capture else 0 for kind in (False, True)}

    @property
    def captured(self) -> int:
        """How many update kinds run as a graph now (0, 1 or 2)."""
        return len(self.graphs)

    def __call__(self, batch: Batch, noise: torch.Tensor, actor_step: bool) -> Metrics:
        body = self.body
        if self.eager_left[actor_step] > 0:
            self.eager_left[actor_step] -= 1
            return self._on_side_stream(lambda: body(batch.to(self.device), noise, actor_step))
        if self.static is not None and batch.image.shape != self.static.image.shape:
            return body(batch.to(self.device), noise, actor_step)  # an odd-sized batch: eager
        self._copy_in(batch, noise)
        if not self.capture:
            return body(self.static, self.noise, actor_step)
        if actor_step not in self.graphs:
            self.graphs[actor_step] = self._capture(actor_step)
        graph, outputs = self.graphs[actor_step]
        graph.replay()
        # The outputs are the graph's own buffers, overwritten by the next replay.
        return {k: v.clone() for k, v in outputs.items()}

    def _copy_in(self, batch: Batch, noise: torch.Tensor) -> None:
        device = self.device
        if self.static is None:
            ones = torch.ones(batch.reward.shape, device=device)
            self.static = Batch(*(torch.empty_like(t, device=device) if t is not None else ones for t in batch))
            self.noise = torch.empty_like(noise, device=device)
        for dst, src in zip(self.static, batch):
            if src is None:
                dst.fill_(1.0)
            else:
                dst.copy_(src, non_blocking=True)
        self.noise.copy_(noise, non_blocking=True)

    def _capture(self, actor_step: bool) -> tuple[torch.cuda.CUDAGraph, Metrics]:
        unstepped = self._unstepped(actor_step)
        if unstepped:
            raise RuntimeError(f"a CUDA graph captured before {unstepped} ever stepped would record the "
                               "creation of their state and reset it at every replay")
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(self.device)
        with torch.cuda.graph(graph):  # a pool of its own: the two kinds replay in no fixed order
            outputs = self.body(self.static, self.noise, actor_step)
        return graph, outputs

    def _unstepped(self, actor_step: bool) -> list[str]:
        """The optimizers this update kind steps that hold no state yet for some parameter."""
        return [name for name, opt in self.optimizers(actor_step).items()
                if any(not opt.state.get(p) for group in opt.param_groups for p in group["params"])]

    def _on_side_stream(self, fn: Callable[[], Metrics]) -> Metrics:
        if not self.capture:
            return fn()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            out = fn()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        return out
