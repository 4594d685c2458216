"""TD3 math on tiny batches: targets, delays, Polyak rates, the CNNs, exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from learner.networks import NetworkConfig, Policy
from learner.state import StateError
from learner.td3 import NETWORKS, Batch, TD3Agent, TD3Config, trained_on_own_encoder

V = NetworkConfig().vector_dim


def make_batch(seed: int, n: int = 4, v: int = V) -> Batch:
    g = torch.Generator().manual_seed(seed)
    img = lambda: torch.randint(0, 256, (n, 4, 84, 84), generator=g, dtype=torch.uint8)  # noqa: E731
    return Batch(
        image=img(),
        vector=torch.rand(n, v, generator=g) * 2 - 1,
        action=torch.rand(n, 2, generator=g) * 2 - 1,
        reward=torch.rand(n, generator=g),
        discount=torch.full((n,), 0.99),
        next_image=img(),
        next_vector=torch.rand(n, v, generator=g) * 2 - 1,
    )


def agent(**kw) -> TD3Agent:
    return TD3Agent(TD3Config(device="cpu", **kw))


def params(m: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in m.parameters()]


def changed(before: list[torch.Tensor], m: nn.Module) -> bool:
    return any(not torch.equal(b, p) for b, p in zip(before, m.parameters()))


def test_td_target_matches_hand_computed_value():
    a = agent(policy_noise=0.0)
    # Make both target Q heads constant (2.0 and 3.0) so min(Q1', Q2') = 2.0 for any input.
    with torch.no_grad():
        for head, c in ((a.critic_target.Q1, 2.0), (a.critic_target.Q2, 3.0)):
            head.l3.weight.zero_()
            head.l3.bias.fill_(c)
    b = make_batch(0)._replace(
        reward=torch.tensor([1.0, 0.5, -1.0, 0.0]),
        discount=torch.tensor([0.99, 0.0, 0.99 ** 3, 0.99]),
    )
    expected = torch.tensor([1.0 + 0.99 * 2.0, 0.5, -1.0 + 0.99 ** 3 * 2.0, 0.99 * 2.0])
    torch.testing.assert_close(a.td_target(b), expected, rtol=0, atol=1e-6)


def test_target_policy_noise_is_clipped_by_noise_clip():
    b = make_batch(1)
    clean = agent(policy_noise=0.0).td_target(b)
    # Noise with a huge std but a zero clip must leave the target exactly as without noise.
    torch.testing.assert_close(agent(policy_noise=100.0, noise_clip=0.0).td_target(b), clean, rtol=0, atol=0)
    assert not torch.equal(agent(policy_noise=100.0, noise_clip=0.5).td_target(b), clean)


def test_actor_and_its_cnn_change_only_every_policy_freq_updates():
    a = agent(policy_freq=3, actor_encoder="own")  # the seed's design: the actor CNN is the actor's
    for it in range(1, 7):
        actor, actor_cnn, critic = params(a.actor), params(a.actor_cnn), params(a.critic)
        critic_cnn = params(a.critic_cnn)
        metrics = a.update(make_batch(it))
        delayed = it % 3 == 0
        assert changed(actor, a.actor) is delayed, it
        assert changed(actor_cnn, a.actor_cnn) is delayed, it
        assert ("actor_loss" in metrics) is delayed
        assert changed(critic, a.critic) and changed(critic_cnn, a.critic_cnn)


def test_every_target_moves_by_exactly_tau_toward_its_online_network():
    tau = 0.05
    a = agent(policy_freq=2, tau=tau)
    a.update(make_batch(1))  # critic-only step: targets must not move
    before = {n: params(getattr(a, f"{n}_target")) for n in NETWORKS}
    a.update(make_batch(2))  # delayed step: actor update, then Polyak on all four
    for name in NETWORKS:
        target, online = getattr(a, f"{name}_target"), getattr(a, name)
        for t0, t1, o in zip(before[name], target.parameters(), online.parameters()):
            torch.testing.assert_close(t1, t0 + tau * (o.detach() - t0), rtol=0, atol=1e-7)
        assert changed(before[name], target), name


def test_targets_do_not_move_on_critic_only_steps():
    a = agent(policy_freq=2)
    before = {n: params(getattr(a, f"{n}_target")) for n in NETWORKS}
    a.update(make_batch(1))
    assert not any(changed(before[n], getattr(a, f"{n}_target")) for n in NETWORKS)


def test_both_cnns_learn_after_one_update():
    """The replaced system's bug: CNN learning silently not kept."""
    a = agent(policy_freq=1)
    actor_cnn, critic_cnn = params(a.actor_cnn), params(a.critic_cnn)
    a.update(make_batch(0))
    assert changed(actor_cnn, a.actor_cnn)
    assert changed(critic_cnn, a.critic_cnn)
    # And the change reaches the saved state.
    saved = a.state()
    assert not torch.equal(saved["actor_cnn"]["features.0.weight"], actor_cnn[0])
    assert not torch.equal(saved["critic_cnn"]["fc.weight"], critic_cnn[-2])


def assert_states_equal(s1, s2, path=""):
    assert type(s1) is type(s2), path
    if isinstance(s1, dict):
        assert s1.keys() == s2.keys(), path
        for k in s1:
            assert_states_equal(s1[k], s2[k], f"{path}.{k}")
    elif isinstance(s1, list):
        assert len(s1) == len(s2), path
        for i, (x, y) in enumerate(zip(s1, s2)):
            assert_states_equal(x, y, f"{path}[{i}]")
    elif isinstance(s1, torch.Tensor):
        assert s1.dtype == s2.dtype and torch.equal(s1, s2), path
    else:
        assert s1 == s2, path


def test_exact_resume_is_bitwise():
    k, n = 3, 4
    batches = [make_batch(i) for i in range(k + n)]
    straight = agent(seed=7)
    for b in batches:
        straight.update(b)

    first = agent(seed=7)
    for b in batches[:k]:
        first.update(b)
    saved = first.state()
    resumed = agent(seed=123)  # different init: everything must come from the state
    resumed.load_state(saved)
    for b in batches[k:]:
        resumed.update(b)

    assert resumed.total_it.value == k + n
    assert_states_equal(straight.state(), resumed.state())
    obs = (batches[0].image[0].numpy(), batches[0].vector[0].numpy())
    np.testing.assert_array_equal(straight.act(*obs, 0.1), resumed.act(*obs, 0.1))


SHAPES = {
    "actor_cnn": {
        "features.0.weight": [32, 4, 8, 8], "features.0.bias": [32],
        "features.3.weight": [64, 32, 4, 4], "features.3.bias": [64],
        "features.6.weight": [64, 64, 3, 3], "features.6.bias": [64],
        "fc.weight": [512, 3136], "fc.bias": [512],
    },
    "actor": {
        "fc1.weight": [256, 535], "fc1.bias": [256], "fc2.weight": [256, 256], "fc2.bias": [256],
        "fc3.weight": [2, 256], "fc3.bias": [2],
    },
    "critic": {
        f"{q}.{k}": s
        for q in ("Q1", "Q2")
        for k, s in {"l1.weight": [256, 537], "l1.bias": [256], "l2.weight": [256, 256],
                     "l2.bias": [256], "l3.weight": [1, 256], "l3.bias": [1]}.items()
    },
}
SHAPES["critic_cnn"] = SHAPES["actor_cnn"]


@pytest.mark.parametrize("name", ["actor_cnn", "critic_cnn", "actor", "critic"])
def test_keys_and_shapes_match_the_seed_table(name):
    a = agent()
    for net in (getattr(a, name), getattr(a, f"{name}_target")):
        assert {k: list(v.shape) for k, v in net.state_dict().items()} == SHAPES[name]


def test_vector_size_is_configurable_and_shapes_follow():
    a = TD3Agent(TD3Config(device="cpu"), NetworkConfig(waypoints=4))
    assert a.actor.fc1.weight.shape == (256, 512 + 11)
    assert a.critic.Q2.l1.weight.shape == (256, 512 + 11 + 2)
    a.update(make_batch(0, v=11))


def test_load_state_names_missing_extra_and_misshaped_keys():
    a = agent()
    s = a.state()
    del s["actor_cnn"]["fc.bias"]
    s["critic"]["Q3.l1.weight"] = torch.zeros(1)
    s["actor"]["fc1.weight"] = torch.zeros(256, 530)
    del s["critic_cnn_optimizer"]
    s["bogus_part"] = {}
    with pytest.raises(StateError) as err:
        agent().load_state(s)
    msg = str(err.value)
    for needle in ("missing key actor_cnn.fc.bias", "unexpected key critic.Q3.l1.weight",
                   "shape mismatch at actor.fc1.weight: snapshot [256, 530], agent [256, 535]",
                   "missing part critic_cnn_optimizer", "unexpected part bogus_part"):
        assert needle in msg


def test_load_state_rejects_optimizer_state_of_another_shape():
    a = agent()
    a.update(make_batch(0))
    s = a.state()
    s["critic_optimizer"]["state"]["0"]["exp_avg"] = torch.zeros(3, 3)
    with pytest.raises(StateError, match=r"critic_optimizer\.state\.0\.exp_avg"):
        agent().load_state(s)


def test_registry_covers_every_module_optimizer_and_generator():
    a = agent()
    registered = {id(o) for o in a.parts.objects()}
    kinds = (nn.Module, torch.optim.Optimizer, torch.Generator, np.random.Generator)
    stateful = {k for k, v in vars(a).items() if isinstance(v, kinds)}
    unregistered = sorted(k for k in stateful if id(getattr(a, k)) not in registered)
    assert unregistered == []
    assert len(a.parts.names()) == 15


def test_policy_loads_only_actor_components_and_matches_agent():
    a = agent()
    a.update(make_batch(0))
    a.update(make_batch(1))
    p = Policy(NetworkConfig())
    p.load_components(a.policy_weights())
    b = make_batch(5)
    np.testing.assert_array_equal(
        p.act(b.image.numpy(), b.vector.numpy()), a.act(b.image.numpy(), b.vector.numpy())
    )
    single = p.act(b.image[0].numpy(), b.vector[0].numpy())
    assert single.shape == (2,) and single.dtype == np.float32 and np.abs(single).max() <= 1
    with pytest.raises(KeyError, match="actor_cnn"):
        p.load_components({"actor": a.policy_weights()["actor"]})


def test_critic_gradients_are_clipped_to_the_configured_norm():
    a = agent(critic_grad_clip=1e-3, policy_freq=2)
    before = params(a.critic)
    m = a.update(make_batch(0))
    # The metric reports the pre-clip norm; the gradients left on the parameters are the clipped ones.
    total = torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for p in [*a.critic_cnn.parameters(), *a.critic.parameters()]
                     if p.grad is not None])
    )
    assert m["critic_grad_norm"] > 1e-3
    assert total <= 1e-3 * 1.001 or total == 0
    assert changed(before, a.critic)


def saturated_agent(penalty: float) -> TD3Agent:
    """An agent whose actor sits deep in tanh saturation, the state the seed's runs ended in."""
    a = agent(policy_freq=1, actor_preact_penalty=penalty, actor_grad_clip=None)
    with torch.no_grad():
        a.actor.fc3.bias.fill_(-50.0)  # pre-tanh about -50: full left, full brake
    return a


def test_a_saturated_actor_gets_no_gradient_without_the_preact_penalty():
    a = saturated_agent(0.0)
    a.update(make_batch(0))
    assert a.actor.fc3.bias.grad is None or a.actor.fc3.bias.grad.abs().max() < 1e-12


def test_the_preact_penalty_pulls_a_saturated_actor_back():
    a = saturated_agent(1e-3)
    b = make_batch(0)
    before = a.actor.preact(a.actor_cnn(b.image), b.vector).detach()
    for i in range(20):
        m = a.update(make_batch(i))
    after = a.actor.preact(a.actor_cnn(b.image), b.vector).detach()
    assert (after > before + 1e-3).all()  # every pre-tanh output moved back toward zero
    assert m["actor_preact_sq"] > 0


def test_feature_norm_adds_no_state_keys_and_normalises_features():
    plain, normed = TD3Agent(TD3Config(device="cpu")), TD3Agent(TD3Config(device="cpu"),
                                                                NetworkConfig(feature_norm=True))
    assert plain.state().keys() == normed.state().keys()
    for name in NETWORKS:
        assert getattr(plain, name).state_dict().keys() == getattr(normed, name).state_dict().keys()
    normed.load_state(plain.state())  # a checkpoint of either kind loads into the other
    img = make_batch(0).image
    cnn = normed.actor_cnn
    pre = torch.nn.functional.layer_norm(cnn.fc(cnn.features(img.float() / 255)), (512,))
    torch.testing.assert_close(cnn(img), torch.relu(pre))
    assert abs(pre.mean().item()) < 1e-5 and abs(pre.std(unbiased=False).item() - 1) < 2e-2


@pytest.mark.parametrize("encoder", ["own", "critic"])
def test_actor_metrics_report_the_critics_action_gradient(encoder):
    b = make_batch(3)
    a = agent(policy_freq=1, actor_preact_penalty=0.0, actor_encoder=encoder)
    m = a.update(b)
    # The actor step sees the critic after its own step: replay that critic step on a twin.
    ref = agent(policy_freq=1, actor_preact_penalty=0.0, actor_encoder=encoder)
    ref.update_critic(b)
    with torch.no_grad():
        action = ref.actor((ref.critic_cnn if encoder == "critic" else ref.actor_cnn)(b.image), b.vector)
        features = ref.critic_cnn(b.image)
    probe = action.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(ref.critic.q1(features, b.vector, probe).sum(), probe)
    torch.testing.assert_close(torch.stack([m["dq_dsteer"], m["dq_dthrottle"]]), grad.mean(0), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(m["policy_throttle"], action[:, 1].mean())
    assert 0.0 <= m["actor_saturated"] <= 1.0


@pytest.mark.parametrize("encoder", ["own", "critic"])
def test_runtime_update_agrees_with_the_plain_reference_over_ten_updates(encoder):
    """The yardstick of `fleet bench learner`: any faster path must compute TD3 exactly (fp32, 1e-5)."""
    from learner.td3_reference import reference_update

    fast, ref = agent(actor_encoder=encoder), agent(actor_encoder=encoder, fused_adam=False)
    assert all(g["fused"] for g in fast.critic_cnn_optimizer.param_groups)
    assert not any(g["fused"] for g in ref.critic_cnn_optimizer.param_groups)
    for i in range(10):
        b = make_batch(i, n=8)
        fast.update(b)
        reference_update(ref, b)
    s1, s2 = fast.state(), ref.state()
    assert s1.keys() == s2.keys()
    for part in NETWORKS + tuple(f"{n}_target" for n in NETWORKS):
        assert s1[part].keys() == s2[part].keys()
        for key in s1[part]:
            torch.testing.assert_close(s1[part][key], s2[part][key], rtol=0, atol=1e-5, msg=f"{part}.{key}")


def test_image_buffers_scale_like_the_cnn_and_are_reused_until_the_batch_shape_changes():
    """A CPU update scales its images into buffers it keeps (fresh 7 MB tensors page-faulted every
    update): the values are the CNN's own x / 255, bit for bit, in channels_last."""
    from learner.td3 import ImageBuffers, scaled_images

    buffers = ImageBuffers()
    first = make_batch(1, n=8).image
    out = scaled_images(first, buffers)
    assert out.is_contiguous(memory_format=torch.channels_last) and out.dtype == torch.float32
    assert torch.equal(out, first.float() / 255.0)
    assert torch.equal(scaled_images(first), out)  # the unbuffered path makes the same values
    pointer = out.data_ptr()
    second = make_batch(2, n=8).image
    again = scaled_images(second, buffers)
    assert again.data_ptr() == pointer and torch.equal(again, second.float() / 255.0)
    odd = make_batch(3, n=5).image
    resized = scaled_images(odd, buffers)
    assert resized.shape == odd.shape and torch.equal(resized, odd.float() / 255.0)


def test_runtime_update_agrees_with_the_reference_when_the_batch_size_changes():
    """The image buffers follow the batch shape, and image and next_image never share one."""
    from learner.td3_reference import reference_update

    fast, ref = agent(), agent(fused_adam=False)
    for i, n in enumerate((8, 5, 5, 8)):
        b = make_batch(i, n=n)
        fast.update(b)
        reference_update(ref, b)
    s1, s2 = fast.state(), ref.state()
    for part in NETWORKS + tuple(f"{n}_target" for n in NETWORKS):
        for key in s1[part]:
            torch.testing.assert_close(s1[part][key], s2[part][key], rtol=0, atol=1e-5, msg=f"{part}.{key}")


def test_a_shared_encoder_acts_through_a_copy_of_the_critics_cnn_and_trains_it_by_the_td_loss_only():
    own, shared = agent(actor_encoder="own"), agent(actor_encoder="critic")
    assert own.state().keys() == shared.state().keys()  # same parts, keys and shapes: checkpoints interchange
    for name in ("actor_cnn", "actor_cnn_target"):
        src = name.replace("actor", "critic", 1)
        assert getattr(shared, name).state_dict().keys() == getattr(own, name).state_dict().keys()
        for d, s in zip(getattr(shared, name).parameters(), getattr(shared, src).parameters()):
            assert torch.equal(d, s)
    # The actor loss leaves the critic's CNN alone: one actor step (after a critic step) changes the
    # actor head, and the CNN only by what the critic step did.
    b = make_batch(5)
    twin = agent(actor_encoder="critic")
    twin.update_critic(b)
    shared.update_critic(b)
    shared.update_actor(b)
    for p, q in zip(shared.critic_cnn.parameters(), twin.critic_cnn.parameters()):
        assert torch.equal(p, q)
    assert any(not torch.equal(p, q) for p, q in zip(shared.actor.parameters(), twin.actor.parameters()))
    # After full updates, every way of reading the actor's CNN sees the critic's, so what workers act
    # with and what snapshots hold is what the actor learned on (the copy is made when read).
    for i in range(4):
        shared.update(make_batch(i))
    weights, state = shared.policy_weights(), shared.state()
    for key, value in shared.critic_cnn.state_dict().items():
        assert torch.equal(weights["actor_cnn"][key], value) and torch.equal(state["actor_cnn"][key], value)
        assert torch.equal(state["actor_cnn_target"][key], shared.critic_cnn_target.state_dict()[key])
    shared.update(make_batch(7))
    img, vec = make_batch(9).image, make_batch(9).vector
    with torch.no_grad():
        expected = shared.actor(shared.critic_cnn(img), vec)
    np.testing.assert_allclose(shared.act(img.numpy(), vec.numpy()), expected.numpy(), atol=1e-6)
    for name in ("actor_cnn", "actor_cnn_target"):
        for d, s in zip(getattr(shared, name).parameters(), getattr(shared, name.replace("actor", "critic", 1)).parameters()):
            assert torch.equal(d, s)
    # An own-encoder state (a seed checkpoint's) is refused: its actor head never saw the critic's
    # features. It loads into an own-encoder agent, and a shared state loads into either.
    assert trained_on_own_encoder(own.state()) and not trained_on_own_encoder(shared.state())
    with pytest.raises(StateError, match="--set agent.actor_encoder=own"):
        shared.load_state(own.state())
    agent(actor_encoder="own").load_state(own.state())
    agent(actor_encoder="own").load_state(shared.state())
    agent(actor_encoder="critic").load_state(shared.state())
    with pytest.raises(ValueError, match="actor_encoder"):
        TD3Config(actor_encoder="mine")


@pytest.mark.parametrize("saved_fused", [False, True])
def test_the_adam_kernel_is_the_loading_agents_choice_and_the_update_is_the_same(saved_fused):
    """A snapshot of a plain-Adam run continues on the fused kernel and the other way round: the kernel
    is not part of the state, and from the same state both take the same step (fp32, 1e-6). One state
    loads into two agents without their sharing its tensors."""
    saver = agent(fused_adam=saved_fused)
    for i in range(3):
        saver.update(make_batch(i))
    state = saver.state()
    moments = {k: v.clone() for k, v in state["critic_optimizer"]["state"]["0"].items()}
    loaders = {fused: agent(fused_adam=fused) for fused in (False, True)}
    for fused, loader in loaders.items():
        loader.load_state(state)
        assert all(bool(g["fused"]) == fused for g in loader.critic_optimizer.param_groups)
        assert loader.state().keys() == state.keys()
        loader.update(make_batch(3))
    # Loading copies the optimizer's moments and step: the two agents stepped their own, not the state's.
    for key, value in moments.items():
        assert torch.equal(state["critic_optimizer"]["state"]["0"][key], value), key
    plain, fused = loaders[False].state(), loaders[True].state()
    for part in NETWORKS:
        for key in plain[part]:
            torch.testing.assert_close(plain[part][key], fused[part][key], rtol=0, atol=1e-6, msg=f"{part}.{key}")


def _weighted(b: Batch, seed: int) -> Batch:
    return b._replace(weight=torch.rand(b.reward.shape, generator=torch.Generator().manual_seed(seed)) + 0.5)


def test_the_graphed_updates_static_buffer_path_computes_the_plain_update_bitwise():
    """The CUDA-graph path (learner/graphed.py) without a capture: batches copied into static buffers,
    noise drawn by the agent and copied in, both update kinds, weights None and not, an odd-sized batch
    run eagerly, a reset after loading a state. It must equal the plain update bit for bit, which the
    reference test above ties to TD3."""
    from learner.graphed import GraphedUpdate

    plain, graphed = agent(), agent()
    graphed.graphed = GraphedUpdate(graphed.update_body, graphed.update_optimizers, graphed.device, capture=False)
    assert graphed.graphed.captured == 0 and graphed.graphed.eager_left == {False: 0, True: 0}
    assert graphed.graphed._unstepped(True) == ["critic_optimizer", "critic_cnn_optimizer", "actor_optimizer"]
    batches = [make_batch(i, n=8) for i in range(6)] + [make_batch(6, n=5)]
    batches += [_weighted(make_batch(i, n=8), i) for i in range(7, 10)]
    for i, b in enumerate(batches):
        m1, m2 = plain.update(b), graphed.update(b)
        assert m1.keys() == m2.keys()
        for k in m1:
            assert torch.equal(m1[k], m2[k]), (i, k)
        if i == 4:  # metrics are the caller's: the next update does not overwrite them
            kept = {k: v.clone() for k, v in m2.items()}
            held = m2
    assert all(torch.equal(held[k], kept[k]) for k in kept)
    assert graphed.graphed._unstepped(True) == []  # what a capture checks first
    state = plain.state()
    graphed.load_state(state)
    assert graphed.graphed.static is None  # reset: the loaded moments are new tensors
    for i in range(10, 13):
        plain.update(make_batch(i, n=8))
        graphed.update(make_batch(i, n=8))
    s1, s2 = plain.state(), graphed.state()
    assert s1.keys() == s2.keys()
    for part in NETWORKS + tuple(f"{n}_optimizer" for n in NETWORKS):
        for key, value in s1[part].items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, s2[part][key]), f"{part}.{key}"
        if part.endswith("_optimizer"):
            for idx, moments in s1[part]["state"].items():
                for key, value in moments.items():
                    assert torch.equal(value, s2[part]["state"][idx][key]), f"{part}.{idx}.{key}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_updates_agree_with_eager_cuda_updates():
    """Captured and eager CUDA updates from the same state: 20 updates (each kind 3 times eager, then
    captured) within 1e-5, capturable fused Adam, same state keys."""
    # policy_freq 4: the first actor step comes after the critic kind's warm-up; it must warm up too.
    eager = TD3Agent(TD3Config(device="cuda", cuda_graphs=False, policy_freq=4))
    graphed = TD3Agent(TD3Config(device="cuda", policy_freq=4))
    assert all(g["capturable"] and g["fused"] for g in graphed.critic_optimizer.param_groups)
    graphed.load_state(eager.state())
    for i in range(20):
        b = make_batch(i, n=8) if i % 3 else _weighted(make_batch(i, n=8), i)
        eager.update(b)
        graphed.update(b)
    assert graphed.graphed.captured == 2  # 15 critic-only updates (3 eager), 5 with the actor (3 eager)
    s1, s2 = eager.state(), graphed.state()
    assert s1.keys() == s2.keys()
    for part in NETWORKS + tuple(f"{n}_target" for n in NETWORKS):
        for key in s1[part]:
            torch.testing.assert_close(s1[part][key], s2[part][key], rtol=0, atol=1e-5, msg=f"{part}.{key}")


def test_bf16_cnns_stay_within_their_documented_tolerance():
    """`agent.cnn_bf16`: CNN features within 1% (relative L2) of fp32 from the same weights, and one
    update's critic loss, Q, target and gradient norm within 0.1%; weights, state keys and dtypes as
    in fp32. (On this CPU bf16 autocast is emulated and slow: the option is for GPUs.)"""
    from learner.td3 import scaled_images

    fp32, bf16 = agent(), agent(cnn_bf16=True)
    b = make_batch(99, n=64)
    with torch.no_grad():
        f1 = fp32.encode(fp32.critic_cnn, scaled_images(b.image))
        f2 = bf16.encode(bf16.critic_cnn, scaled_images(b.image))
    assert f2.dtype == torch.float32 and not torch.equal(f1, f2)  # bf16 did run
    assert (f1 - f2).norm() / f1.norm() < 0.01
    m1, m2 = fp32.update(b), bf16.update(b)
    for key in ("critic_loss", "q1", "target_q", "critic_grad_norm"):
        assert abs(m1[key].item() - m2[key].item()) <= 1e-3 * abs(m1[key].item()), key
    s1, s2 = fp32.state(), bf16.state()
    assert s1.keys() == s2.keys()
    for part in NETWORKS:
        assert {k: (v.shape, v.dtype) for k, v in s1[part].items()} == {k: (v.shape, v.dtype) for k, v in s2[part].items()}
