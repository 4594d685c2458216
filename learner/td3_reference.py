"""TD3 (Fujimoto et al., 2018) written out plainly, for reading: one update, step by step, on a `TD3Agent`'s
networks and optimizers. It is the yardstick of the runtime's update (`TD3Agent.update`, learner/td3.py):
the tests check that both compute the same (fp32, 1e-5), and `fleet bench learner` times both."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from learner.replay.batch import Batch
    from learner.td3 import TD3Agent


def reference_update(agent: TD3Agent, b: Batch) -> None:
    """TD3 (Fujimoto et al.) written out plainly: the yardstick for the runtime path and its tests."""
    import torch

    cfg = agent.cfg
    shared = cfg.actor_encoder == "critic"  # the actor reads the critic's CNN (and target CNN)
    actor_cnn_target = agent.critic_cnn_target if shared else agent.actor_cnn_target
    agent.total_it.value += 1
    with torch.no_grad():
        noise = (torch.randn(b.action.shape, generator=agent.noise_gen, device=agent.device)
                 * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
        next_action = (agent.actor_target(actor_cnn_target(b.next_image), b.next_vector) + noise).clamp(-1, 1)
        tq1, tq2 = agent.critic_target(agent.critic_cnn_target(b.next_image), b.next_vector, next_action)
        target = b.reward + b.discount * torch.min(tq1, tq2)
    q1, q2 = agent.critic(agent.critic_cnn(b.image), b.vector, b.action)
    w = b.weight if b.weight is not None else torch.ones_like(q1)
    critic_loss = (w * ((q1 - target) ** 2 + (q2 - target) ** 2)).mean()
    for opt in (agent.critic_optimizer, agent.critic_cnn_optimizer):
        opt.zero_grad(set_to_none=True)
    critic_loss.backward()
    critic_params = [*agent.critic_cnn.parameters(), *agent.critic.parameters()]
    if cfg.critic_grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(critic_params, cfg.critic_grad_clip)
    agent.critic_optimizer.step()
    agent.critic_cnn_optimizer.step()
    if agent.total_it.value % cfg.policy_freq:
        agent.sync_actor_encoder()
        return
    with torch.no_grad():
        critic_features = agent.critic_cnn(b.image)
    actor_features = critic_features if shared else agent.actor_cnn(b.image)
    pre = agent.actor.preact(actor_features, b.vector)
    actor_loss = -agent.critic.q1(critic_features, b.vector, torch.tanh(pre)).mean()
    actor_loss = actor_loss + cfg.actor_preact_penalty * (pre ** 2).mean()
    for opt in (agent.actor_optimizer, agent.actor_cnn_optimizer):
        opt.zero_grad(set_to_none=True)
    actor_loss.backward()
    actor_params = [*agent.actor.parameters()] + ([] if shared else [*agent.actor_cnn.parameters()])
    if cfg.actor_grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(actor_params, cfg.actor_grad_clip)
    agent.actor_optimizer.step()
    if not shared:
        agent.actor_cnn_optimizer.step()
    agent.critic.zero_grad(set_to_none=True)
    with torch.no_grad():
        for name in ("actor", "critic_cnn", "critic") if shared else ("actor_cnn", "actor", "critic_cnn", "critic"):
            for t, o in zip(getattr(agent, f"{name}_target").parameters(), getattr(agent, name).parameters()):
                t.mul_(1 - cfg.tau).add_(o, alpha=cfg.tau)
    agent.sync_actor_encoder()
