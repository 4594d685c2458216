"""The levers issue 28 measures (default off): LayerNorm in the critic, critic weight decay, DrQ's random
shift, periodic head resets. Off, the agent is the seed's, key for key; on, each does what it says."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_td3 import make_batch

from learner.networks import NetworkConfig
from learner.td3 import TD3Agent, TD3Config, random_shift


def agent(net: NetworkConfig | None = None, **kw) -> TD3Agent:
    return TD3Agent(TD3Config(device="cpu", **kw), net or NetworkConfig())


def test_off_the_agent_keeps_the_seeds_parts_and_optimizers() -> None:
    a = agent()
    state = a.state()
    assert "aug_rng" not in state and not any(".n1." in k for k in state["critic"])
    assert type(a.critic_optimizer) is torch.optim.Adam


def test_layernorm_in_both_q_heads_adds_its_keys_and_trains() -> None:
    a = agent(NetworkConfig(critic_layernorm=True))
    keys = set(a.state()["critic"])
    assert {"Q1.n1.weight", "Q1.n2.bias", "Q2.n1.weight", "Q2.n2.bias"} <= keys
    before = a.critic.Q1.n1.weight.clone()
    for i in range(2):
        a.update(make_batch(i, n=8))
    assert not torch.equal(before, a.critic.Q1.n1.weight)


def test_critic_weight_decay_is_decoupled_adamw_on_the_critic_only() -> None:
    a = agent(critic_weight_decay=0.01)
    assert type(a.critic_optimizer) is torch.optim.AdamW and type(a.critic_cnn_optimizer) is torch.optim.AdamW
    assert type(a.actor_optimizer) is torch.optim.Adam
    assert a.critic_optimizer.param_groups[0]["weight_decay"] == 0.01


def test_random_shift_moves_each_image_by_its_own_whole_pixel_shift() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 4, 84, 84), dtype=torch.uint8)
    out = random_shift(images, 4, g)
    assert out.shape == images.shape and out.dtype == torch.uint8
    shifts = set()
    for b in range(16):  # the interior of each output is the input moved by some (dy, dx) in [-4, 4]
        found = [(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)
                 if torch.equal(out[b, :, 8:-8, 8:-8], images[b, :, 8 + dy:76 + dy, 8 + dx:76 + dx])]
        assert found, b
        shifts.add(found[0])
    assert len(shifts) > 4  # drawn apart per sample
    again = random_shift(images, 4, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_the_shift_is_drawn_from_the_agents_own_saved_generator() -> None:
    a, b = agent(augment_shift=4, seed=3), agent(augment_shift=4, seed=3)
    assert "aug_rng" in a.state()
    for i in range(3):
        a.update(make_batch(i, n=8))
        b.update(make_batch(i, n=8))
    assert all(torch.equal(x, y) for x, y in zip(a.critic.parameters(), b.critic.parameters()))
    c = agent(seed=3)  # no shift: a different update
    for i in range(3):
        c.update(make_batch(i, n=8))
    assert not all(torch.equal(x, y) for x, y in zip(a.critic.parameters(), c.critic.parameters()))


def test_reset_heads_starts_the_heads_afresh_and_keeps_the_cnns() -> None:
    a = agent()
    for i in range(4):
        a.update(make_batch(i, n=8))
    cnn = a.critic_cnn.fc.weight.clone()
    head = a.critic.Q1.l1.weight.clone()
    assert a.critic_optimizer.state
    a.reset_heads()
    assert torch.equal(cnn, a.critic_cnn.fc.weight) and not torch.equal(head, a.critic.Q1.l1.weight)
    assert torch.equal(a.critic.Q1.l1.weight, a.critic_target.Q1.l1.weight)
    assert not a.critic_optimizer.state and not a.actor_optimizer.state
    a.update(make_batch(9, n=8))  # and it trains on
    assert np.isfinite(a.critic.Q1.l3.weight.detach().numpy()).all()


def test_a_learner_with_reset_every_resets_on_schedule(monkeypatch) -> None:
    from test_replay_support import episode_chunks

    from learner.learner import Learner, LearnerConfig
    from learner.replay import ReplayConfig

    with pytest.raises(ValueError, match="reset_every"):
        LearnerConfig(reset_every=-1)
    net = NetworkConfig()
    learner = Learner(TD3Config(device="cpu", batch_size=8), net, ReplayConfig(capacity=1000),
                      LearnerConfig(learning_starts=50, replay_ratio=1.0, reset_every=3, updates_per_call=8), seed=0)
    calls: list[int] = []
    monkeypatch.setattr(learner.agent, "reset_heads", lambda: calls.append(learner.updates))
    chunks = episode_chunks(200, chunk_steps=50, p_end=0.0, vector_dim=net.vector_dim)
    assert learner.step(lambda: chunks) == 8
    assert calls == [3, 6]
