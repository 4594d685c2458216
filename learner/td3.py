"""TD3 (Fujimoto et al., 2018) on images + state vector, with separate actor and critic encoders.

`update(batch)` is a pure function of the agent's networks, optimizers and the
batch it is given: it never samples. It returns a dict of tensor metrics; the
caller calls `.item()` only when it logs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from learner.graphed import GraphedUpdate
from learner.networks import NetworkConfig, act_with, build_networks
from learner.replay.batch import Batch
from learner.state import Counter, Registry, State, StateError

NETWORKS = ("actor_cnn", "actor", "critic_cnn", "critic")


@dataclass(frozen=True)
class TD3Config:
    gamma: float = 0.95
    """Discount per environment step. 0.95 is a horizon of about 20 steps, 4 s of a 5 Hz controller:
    what a collision or the road's edge ahead needs. With tau 0.005 the critic then nears its fixed
    point five times sooner than at 0.99: seed 1 reached the learning level at 15 minutes, where at
    0.99 it had not in 25 (docs/benchmarks.md, "A 4-second horizon")."""
    tau: float = 0.005
    """Polyak rate: each target moves this fraction toward its online network."""
    policy_freq: int = 2
    """Actor and target updates happen every policy_freq critic updates."""
    policy_noise: float = 0.2
    """Std of the target-policy smoothing noise."""
    noise_clip: float = 0.5
    """Clip of the target-policy smoothing noise."""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor and its CNN."""
    critic_lr: float = 3e-4
    """Adam learning rate of the critic and its CNN."""
    batch_size: int = 256
    """Transitions per update."""
    actor_grad_clip: float | None = 1.0
    """Max global grad norm of the actor's trained parameters: its head, and its CNN when actor_encoder
    is 'own' (null disables)."""
    critic_grad_clip: float | None = 10.0
    """Max global grad norm of critic + critic CNN (null disables)."""
    actor_preact_penalty: float = 1e-3
    """Weight of mean(pre-tanh action^2) in the actor loss: keeps the tanh out of saturation."""
    actor_encoder: str = "critic"
    """Which image encoder the actor reads. 'critic': the critic's CNN, trained by the TD loss only,
    its features detached in the actor step (as in SAC-AE and DrQ); actor_cnn and its target hold
    copies of the critic's, so policies, snapshots and seed checkpoints keep both CNNs with their
    keys and shapes, and an update runs two CNN passes fewer (the actor CNN's forward and backward,
    one target CNN forward): 1.5x the updates/s of a Ray run on 2 cores, and seed 1 drove its routes
    (completion 0.92) at 15 minutes instead of 30 (docs/benchmarks.md, "The actor reads the critic's
    encoder"). 'own': the seed's design, actor_cnn trained by the policy gradient alone."""
    fused_adam: bool = True
    """Adam's fused kernel (one pass per parameter tensor instead of a dozen elementwise ops; same
    update, equal up to float rounding) on the CPU and CUDA: a quarter of a CPU update's time was the
    optimizer steps (docs/benchmarks.md, "Learner speed"). False: torch's default implementation."""
    cuda_graphs: bool = True
    """On CUDA: replay each update as a CUDA graph (learner/graphed.py), each update kind after 3
    eager warm-up updates of its own, with capturable fused Adam. Ignored on the CPU."""
    cnn_bf16: bool = False
    """Run the CNNs' forward and backward in bf16 autocast (tensor cores on a GPU; weights, heads,
    losses and Adam stay fp32). Off by default: it changes the math by bf16 rounding (see the test
    `test_bf16_cnns_stay_within_their_documented_tolerance`), and this CPU gains nothing from it."""
    critic_weight_decay: float = 0.0
    """Decoupled weight decay of the critic and its CNN (AdamW, as BRO uses); 0: Adam, the seed's."""
    augment_shift: int = 0
    """DrQ's random shift: each image and next image of a batch moved by up to this many pixels (edges
    replicated), drawn apart for every sample; 0: no augmentation. Not with CUDA graphs."""
    seed: int = 0
    """Seed of network initialisation and of the agent's noise generators."""
    device: str = "auto"
    """'auto' (cuda when available), 'cpu' or 'cuda[:N]'."""

    def __post_init__(self) -> None:
        if not 0.0 < self.tau <= 1.0:
            raise ValueError("tau must be in (0, 1]")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError("gamma must be in [0, 1]")
        if self.policy_freq < 1 or self.batch_size < 1:
            raise ValueError("policy_freq and batch_size must be >= 1")
        if self.actor_encoder not in ("own", "critic"):
            raise ValueError(f"actor_encoder must be 'own' or 'critic', got {self.actor_encoder!r}")
        if self.critic_weight_decay < 0 or not 0 <= self.augment_shift <= 16:
            raise ValueError("critic_weight_decay must be >= 0 and augment_shift in [0, 16] pixels")


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """DrQ's augmentation (Kostrikov et al., 2020): every image of the batch (B, C, H, W) moved by its own
    whole-pixel shift in [-pad, pad] on each axis, the edges replicated; same dtype and shape."""
    b, c, h, w = images.shape
    padded = nn.functional.pad(images.float(), (pad, pad, pad, pad), mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=generator.device).to(images.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=generator.device).to(images.device)
    rows = (torch.arange(h, device=images.device)[None, :] + dy[:, None])[:, None, :, None]
    cols = (torch.arange(w, device=images.device)[None, :] + dx[:, None])[:, None, None, :]
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    chans = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, chans, rows, cols].to(images.dtype)


def scaled_images(image: torch.Tensor, buffers: ImageBuffers | None = None) -> torch.Tensor:
    """uint8 frames as the float input of a NatureCNN (x / 255, the same values its forward makes),
    converted once per batch instead of once per network. On the CPU in channels_last layout, for
    which oneDNN's convolutions are faster (see docs/benchmarks.md, "Learner speed"), and into
    `buffers` when given: the result is then only valid until their next use."""
    if image.dtype != torch.uint8:
        return image
    if image.device.type != "cpu":
        return image.float().div_(255.0)
    if buffers is None:
        return image.contiguous(memory_format=torch.channels_last).float().div_(255.0)
    frames, scaled = buffers.get(image.shape)
    frames.copy_(image)  # the layout change, on bytes
    return scaled.copy_(frames).div_(255.0)  # no float temporary (torch.div(frames, out=) makes one)


class ImageBuffers:
    """A channels_last uint8 and float32 pair for one image batch, kept from one update to the next.

    A batch's scaled images are the largest tensors of an update (7 MB each at batch 64). Allocated
    fresh, they and the update's other MB-sized tensors page-faulted 2-14 MB back in every update
    (up to 3,400 minor faults, about 15% of a CPU update: docs/benchmarks.md, "Page faults"); these
    buffers and learner/common/heap.py's settings together bring that to about zero."""

    def __init__(self) -> None:
        self._pair: tuple[torch.Tensor, torch.Tensor] | None = None

    def get(self, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        if self._pair is None or self._pair[0].shape != shape:
            layout = torch.channels_last
            self._pair = (torch.empty(shape, dtype=torch.uint8, memory_format=layout),
                          torch.empty(shape, dtype=torch.float32, memory_format=layout))
        return self._pair


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    with torch.no_grad():
        for t, o in zip(target.parameters(), online.parameters()):
            t.lerp_(o, tau)


def grad_norm(params: list[nn.Parameter], clip: float | None) -> torch.Tensor:
    if clip is not None:
        return torch.nn.utils.clip_grad_norm_(params, clip)
    grads = [p.grad for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


OWN_ENCODER_STATE = ("this snapshot's actor was trained on its own CNN (agent.actor_encoder=own: a seed "
                     "checkpoint, or a run from before the shared encoder); continue it with --set "
                     "agent.actor_encoder=own")


def trained_on_own_encoder(state: State) -> bool:
    """Whether a saved agent state's actor CNN differs from its critic CNN, i.e. its actor head was
    trained on features of its own (actor_encoder 'own'): loading it with a shared encoder would
    hand that head the critic's features."""
    own, critic = state.get("actor_cnn"), state.get("critic_cnn")
    if not (isinstance(own, dict) and isinstance(critic, dict)) or own.keys() != critic.keys():
        return False
    return not all(torch.equal(torch.as_tensor(own[k]), torch.as_tensor(critic[k])) for k in own)


def _encoder_copy(name: str) -> property:
    """actor_cnn or its target: with a shared encoder a copy of the critic's, brought up to date when
    read rather than after every update (updates never read it; copying both 1.7M-parameter CNNs was a
    tenth of a CPU update)."""
    private = f"_{name}"

    def read(agent: TD3Agent) -> nn.Module:
        agent.fresh_encoder_copies()
        return getattr(agent, private)

    def write(agent: TD3Agent, module: nn.Module) -> None:
        setattr(agent, private, module)

    return property(read, write, doc=f"The {name} network (up to date whenever read).")


class TD3Agent:
    actor_cnn = _encoder_copy("actor_cnn")
    actor_cnn_target = _encoder_copy("actor_cnn_target")
    _encoder_copies_stale = False

    def __init__(self, cfg: TD3Config | None = None, net_cfg: NetworkConfig | None = None) -> None:
        self.cfg = cfg or TD3Config()
        self.net_cfg = net_cfg or NetworkConfig()
        self.device = resolve_device(self.cfg.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed)
            nets = build_networks(self.net_cfg)
        self.parts = Registry()
        reg = self.parts.add
        for name in NETWORKS:
            setattr(self, name, reg(name, nets[name].to(self.device)))
        for name in NETWORKS:
            target = copy.deepcopy(getattr(self, name)).requires_grad_(False)
            setattr(self, f"{name}_target", reg(f"{name}_target", target))
        lr = {"actor_cnn": self.cfg.actor_lr, "actor": self.cfg.actor_lr,
              "critic_cnn": self.cfg.critic_lr, "critic": self.cfg.critic_lr}
        # One Adam per network keeps the seed's optimizer key names; Adam is per-parameter,
        # so this is the same math as one optimizer over actor + actor_cnn.
        graphs = self.cfg.cuda_graphs and self.device.type == "cuda"
        fused = True if (self.cfg.fused_adam or graphs) and self.device.type in ("cpu", "cuda") else None
        decay = self.cfg.critic_weight_decay
        for name in NETWORKS:
            if decay > 0 and name in ("critic", "critic_cnn"):
                opt: torch.optim.Optimizer = torch.optim.AdamW(getattr(self, name).parameters(), lr=lr[name],
                                                               weight_decay=decay, fused=fused, capturable=graphs)
            else:
                opt = torch.optim.Adam(getattr(self, name).parameters(), lr=lr[name], fused=fused,
                                       capturable=graphs)
            setattr(self, f"{name}_optimizer", reg(f"{name}_optimizer", opt))
        self.shared_encoder = self.cfg.actor_encoder == "critic"
        self.sync_actor_encoder()
        self.total_it: Counter = reg("total_it", Counter(0))
        self.noise_gen = reg("noise_rng", torch.Generator(device=self.device).manual_seed(self.cfg.seed))
        self.act_rng: np.random.Generator = reg("act_rng", np.random.default_rng(self.cfg.seed))
        if self.cfg.augment_shift and graphs:
            raise ValueError("agent.augment_shift draws its shifts on the host: set agent.cuda_graphs false")
        # Only when augmenting: the default agent's state keeps the seed's parts.
        self.aug_gen = (reg("aug_rng", torch.Generator(device=self.device).manual_seed(self.cfg.seed + 1))
                        if self.cfg.augment_shift else None)
        self.graphed: GraphedUpdate | None = self.graphed_update() if graphs else None
        self._image_buffers = (ImageBuffers(), ImageBuffers())  # a CPU update's image, next_image

    def update_optimizers(self, actor_step: bool) -> dict[str, torch.optim.Optimizer]:
        """The optimizers, by name, that an update of this kind steps (a critic step, or critic + actor)."""
        names = ["critic_optimizer", "critic_cnn_optimizer"]
        if actor_step:
            names += ["actor_optimizer"] if self.shared_encoder else ["actor_optimizer", "actor_cnn_optimizer"]
        return {name: getattr(self, name) for name in names}

    def graphed_update(self, capture: bool | None = None) -> GraphedUpdate:
        """This agent's update as CUDA graphs (learner/graphed.py); `capture=False`: its static-buffer path."""
        return GraphedUpdate(self.update_body, self.update_optimizers, self.device, capture=capture)

    # Target: clipped double-Q over a smoothed target-policy action.
    def encode(self, cnn: nn.Module, image: torch.Tensor) -> torch.Tensor:
        """A CNN's features, in bf16 autocast when `cnn_bf16` (fp32 features out: the heads, losses
        and optimizers stay fp32)."""
        if not self.cfg.cnn_bf16:
            return cnn(image)
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            return cnn(image).float()

    def target_noise(self, shape: torch.Size) -> torch.Tensor:
        """Clipped Gaussian target-policy smoothing noise, from the agent's own generator."""
        noise = torch.randn(shape, generator=self.noise_gen, device=self.device)
        return (noise * self.cfg.policy_noise).clamp(-self.cfg.noise_clip, self.cfg.noise_clip)

    @torch.no_grad()
    def td_target(self, b: Batch, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            noise = self.target_noise(b.action.shape)
        critic_next = self.encode(self.critic_cnn_target, b.next_image)
        actor_next = critic_next if self.shared_encoder else self.encode(self.actor_cnn_target, b.next_image)
        next_action = self.actor_target(actor_next, b.next_vector) + noise
        next_action = next_action.clamp(-1.0, 1.0)
        tq1, tq2 = self.critic_target(critic_next, b.next_vector, next_action)
        return b.reward + b.discount * torch.min(tq1, tq2)

    # Critic: regress both heads onto the shared target.
    def update_critic(self, b: Batch, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        target_q = self.td_target(b, noise)
        q1, q2 = self.critic(self.encode(self.critic_cnn, b.image), b.vector, b.action)
        w = b.weight if b.weight is not None else torch.ones_like(q1)
        loss = (w * ((q1 - target_q) ** 2 + (q2 - target_q) ** 2)).mean()
        params = [*self.critic_cnn.parameters(), *self.critic.parameters()]
        self.critic_optimizer.zero_grad(set_to_none=True)
        self.critic_cnn_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = grad_norm(params, cfg.critic_grad_clip)
        self.critic_optimizer.step()
        self.critic_cnn_optimizer.step()
        return {"critic_loss": loss.detach(), "q1": q1.detach().mean(), "q2": q2.detach().mean(),
                "target_q": target_q.mean(), "critic_grad_norm": norm.detach(),
                "td_abs": (q1.detach() - target_q).abs()}

    # Actor: deterministic policy gradient through Q1; the critic's encoder is not trained here.
    def update_actor(self, b: Batch) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            critic_features = self.encode(self.critic_cnn, b.image)
        actor_features = critic_features if self.shared_encoder else self.encode(self.actor_cnn, b.image)
        pre = self.actor.preact(actor_features, b.vector)
        action = torch.tanh(pre)
        action.retain_grad()  # d(loss)/d(action) = -dQ/da / B: the critic's pull on each action, for free
        q = self.critic.q1(critic_features, b.vector, action)
        # A saturated tanh passes no gradient: without the penalty one push of an untrained critic
        # can pin the actor at a corner of the action box for good.
        penalty = (pre ** 2).mean()
        loss = -q.mean() + self.cfg.actor_preact_penalty * penalty
        params = [*self.actor.parameters()] if self.shared_encoder else [*self.actor_cnn.parameters(),
                                                                          *self.actor.parameters()]
        self.actor_optimizer.zero_grad(set_to_none=True)
        self.actor_cnn_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = grad_norm(params, self.cfg.actor_grad_clip)
        self.actor_optimizer.step()
        if not self.shared_encoder:
            self.actor_cnn_optimizer.step()
        # The actor loss also left gradients on the critic; they must not leak into its next step.
        self.critic.zero_grad(set_to_none=True)
        dq_da = -action.grad.mean(0) * action.shape[0]
        return {"actor_loss": loss.detach(), "actor_grad_norm": norm.detach(), "actor_q": q.detach().mean(),
                "actor_preact_sq": penalty.detach(), "actor_saturated": (pre.detach().abs() > 3).float().mean(),
                "policy_steer": action.detach()[:, 0].mean(), "policy_throttle": action.detach()[:, 1].mean(),
                "dq_dsteer": dq_da[0], "dq_dthrottle": dq_da[1]}

    # Targets: Polyak average of all four networks, the CNNs included (with a shared encoder the actor
    # CNN's target is the critic CNN's target, copied by fresh_encoder_copies).
    def update_targets(self) -> None:
        for name in NETWORKS:
            if not (self.shared_encoder and name == "actor_cnn"):
                soft_update(getattr(self, f"{name}_target"), getattr(self, name), self.cfg.tau)

    @torch.no_grad()
    def sync_actor_encoder(self) -> None:
        """With actor_encoder 'critic': actor_cnn and its target become copies of the critic's CNN and
        its target, which is what the actor was trained on (workers act through actor_cnn)."""
        if not self.shared_encoder:
            return
        for dst, src in ((self._actor_cnn, self.critic_cnn), (self._actor_cnn_target, self.critic_cnn_target)):
            for d, s in zip(dst.parameters(), src.parameters()):
                d.copy_(s)
        self._encoder_copies_stale = False

    def fresh_encoder_copies(self) -> None:
        """Copy the critic's CNN into actor_cnn (and target) if an update changed it since the last copy.
        Reading either attribute, `act`, `policy_weights` and `state` call it: the registry of parts
        holds the modules themselves, so `state` must."""
        if self._encoder_copies_stale:
            self.sync_actor_encoder()

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One TD3 step on `batch`. Metrics are tensors; `td_abs` is per-sample |Q1 - target|."""
        self.total_it.value += 1
        actor_step = self.total_it.value % self.cfg.policy_freq == 0
        noise = self.target_noise(batch.action.shape)
        if self.aug_gen is not None:
            pad = self.cfg.augment_shift
            batch = batch._replace(image=random_shift(batch.image.to(self.device), pad, self.aug_gen),
                                   next_image=random_shift(batch.next_image.to(self.device), pad, self.aug_gen))
        if self.graphed is not None:
            metrics = self.graphed(batch, noise, actor_step)
        else:
            metrics = self.update_body(batch.to(self.device), noise, actor_step)
        self._encoder_copies_stale = self.shared_encoder
        return metrics

    def update_body(self, b: Batch, noise: torch.Tensor, actor_step: bool) -> dict[str, torch.Tensor]:
        """The device work of one update, given its batch (on the device) and target noise: no host
        syncs, no Python state changes, so a CUDA graph can capture it (learner/graphed.py)."""
        b = b._replace(image=scaled_images(b.image, self._image_buffers[0]),
                       next_image=scaled_images(b.next_image, self._image_buffers[1]))
        metrics = self.update_critic(b, noise)
        if actor_step:
            metrics.update(self.update_actor(b))
            self.update_targets()
        return metrics

    @torch.no_grad()
    def reset_heads(self) -> None:
        """The actor and critic heads start afresh (new initial weights from torch's generator), their targets
        become copies, and their optimizers forget their moments; the CNNs keep what they learned."""
        for name in ("actor", "critic"):
            net, target = getattr(self, name), getattr(self, f"{name}_target")
            for module in net.modules():
                if isinstance(module, (nn.Linear, nn.LayerNorm)):
                    module.reset_parameters()
            target.load_state_dict(net.state_dict())
            getattr(self, f"{name}_optimizer").state.clear()
        self.graphed = self.graphed_update() if self.graphed is not None else None

    def act(self, image: np.ndarray, vector: np.ndarray, noise_std: float | np.ndarray = 0.0,
            rng: np.random.Generator | None = None) -> np.ndarray:
        """Actions for one observation (2,) or a batch (N, 2), with optional Gaussian noise."""
        return act_with(self.actor_cnn, self.actor, image, vector, noise_std, rng or self.act_rng)

    def policy_weights(self) -> dict[str, dict[str, torch.Tensor]]:
        """CPU copies of what a worker needs to act (see learner.networks.Policy)."""
        return {name: {k: v.detach().cpu().clone() for k, v in getattr(self, name).state_dict().items()}
                for name in ("actor_cnn", "actor")}

    def state(self, copy: bool = True) -> State:
        """Everything needed to continue bit-for-bit, from the registry of parts (see Registry.state)."""
        self.fresh_encoder_copies()
        return self.parts.state(copy)

    def load_state(self, state: State) -> None:
        """Strict: raises StateError naming every missing, extra or mis-shaped key. With actor_encoder
        'critic' a state whose actor was trained on its own CNN (a seed checkpoint, a run before the
        shared encoder) is refused: its actor head would read features it never saw."""
        if self.shared_encoder and trained_on_own_encoder(state):
            raise StateError(OWN_ENCODER_STATE)
        self.parts.load_state(state)
        self.sync_actor_encoder()
        if self.graphed is not None:
            self.graphed.reset()  # the optimizers' loaded moments are new tensors the graphs never saw
