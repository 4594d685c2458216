"""A run on a Ray cluster: its actors, where they are placed, what the driver does while they run.

Placement: the learner takes a GPU when the cluster has one; the replay actor is
pinned to the learner's node so only new data crosses the network; rollout
workers need one CPU each, plus one `carla` resource on CARLA runs; the
checkpoint writer is the only writer of the store.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from checkpoint_store.fs import Root, bounded, redact
from checkpoint_store.lease import LeaseHeldError, new_owner, release_owner
from checkpoint_store.manifest import Manifest
from checkpoint_store.store import SnapshotStore
from checkpoint_store.writer import CheckpointWriter, WriterStatus
from cluster.runtime.experiment import ExperimentConfig
from cluster.runtime.nodes import NodeLost, NodeWatch, check_store_shared, describe
from cluster.runtime.periodic_eval import BEST_TAG, InlineEval, PeriodicEval, RayEval
from cluster.runtime.progress import MetricsLog, Status
from cluster.runtime.ray_setup import init_ray
from cluster.runtime.resume import Restored
from cluster.runtime.run import Run, _absorb_reports, await_final_snapshot, final_not_stored, get_reporting
from learner.common import mkl_amd
from learner.common.errors import ConfigError
from learner.replay import ReplayActor
from learner.replay.segments import saved_chunks

if TYPE_CHECKING:
    from cluster.runtime.actors import RunStats

log = logging.getLogger(__name__)


def replay_actor_class() -> Any:
    """The replay actor as Ray runs it: one thread, so each worker's chunks are logged in the order it
    sent them. With several threads, two chunks a worker had in flight at once were at times logged
    swapped; the memory then cut the stream's episode there and dropped its steps as orphans (1,028 of
    21,308 in a fast-collecting run). Every call it serves is short (validate and copy a chunk, hand
    out logged ones): the replay it used to export now lives in the learner."""
    import ray

    return ray.remote(num_cpus=0, max_concurrency=1)(ReplayActor)


class RayRun(Run):
    """Actors on a Ray cluster; this process only orchestrates and reports."""

    def __init__(self, cfg: ExperimentConfig, restored: Restored | None, owner: str | None = None) -> None:
        self.cfg = cfg
        self.restored = restored
        self.owner = owner or new_owner()
        """The run's token in the store's lease: every instance of its checkpoint writer carries it."""
        self._started_ray = False
        self._returns: list[float] = []
        self.workers: list[Any] = []
        self._runs: dict[Any, int] = {}
        self.placement: dict[str, Any] = {}
        self._learner_gpu = False
        self._drains: dict[int, Any] = {}
        self._worker_nodes: dict[int, str] = {}
        self._ran_on: dict[str, set[int]] = {}
        """The workers that ran on each node: a lost node's may be restarted elsewhere before it is seen lost."""
        self.watch: NodeWatch | None = None
        self.node_losses: list[dict[str, Any]] = []
        """Nodes lost during the run: which, when, and the actors that were on them (the summary's)."""
        self.learner_lost = False

    def start(self) -> None:
        """Join or start Ray, check the cluster, then the actors: checkpoint writer, learner and replay (on
        one node), rollout workers."""
        self._start_ray()
        learner_resources = self._check_cluster()
        self._start_writer()
        self._start_learner(learner_resources)
        self._start_workers()
        self.placement = self._placement()

    def _start_ray(self) -> None:
        """Join the configured cluster, or start a one-node Ray for this run with the CPUs and custom
        resources its actors need (after the one-node checks: local capacity, CARLA servers)."""
        import ray

        cfg = self.cfg
        if ray.is_initialized():
            return
        if cfg.run.ray_address:
            init_ray(cfg.run.ray_address, log_file=cfg.run_dir() / "ray.log")
            return
        # Logical CPUs: one per worker and evaluator plus the learner, even on a laptop with fewer
        # cores (they then share them) -- otherwise some workers would never be scheduled.
        cfg.check_local_capacity(os.cpu_count() or 1)
        evaluators = cfg.eval.workers if cfg.eval.every_updates > 0 else 0
        needed = cfg.run.workers + 1 + evaluators
        if cfg.run.env == "carla":  # one node, this environment: fail now, with what to set
            from cluster.runtime.envs import carla_evaluators
            from rollout_workers.carla.checks import check_carla_setup

            check_carla_setup(cfg.carla_server, cfg.run.workers, carla_evaluators(cfg))
        # This one-node instance advertises the workers' custom resource (e.g. `carla`) itself.
        custom = {k: float(cfg.run.workers + evaluators) for k in cfg.worker_resources()}
        if cfg.run.learner_resource:
            custom[cfg.run.learner_resource] = custom.get(cfg.run.learner_resource, 0.0) + 1.0
        init_ray(num_cpus=max(os.cpu_count() or 1, needed), resources=custom,
                 log_file=cfg.run_dir() / "ray.log", allow_without_auth=cfg.run.allow_ray_without_auth)
        self._started_ray = True

    def _check_cluster(self) -> dict[str, float]:
        """What the cluster must offer before any actor starts: a store every node sees, the learner's
        resource; whether the learner takes a GPU. Returns the learner's custom resources."""
        import ray

        cfg = self.cfg
        self.watch = NodeWatch()
        check_store_shared(cfg.store_uri())  # several nodes: each must see the store's one folder
        self._learner_gpu = bool(ray.cluster_resources().get("GPU", 0) >= 1 and cfg.agent.device != "cpu")
        learner_res = {cfg.run.learner_resource: 1.0} if cfg.run.learner_resource else {}
        if learner_res and ray.cluster_resources().get(cfg.run.learner_resource, 0) < 1:
            raise ConfigError(f"run.learner_resource: no node of this cluster advertises a "
                              f"{cfg.run.learner_resource!r} resource (ray start --resources, or the cluster YAML)")
        return learner_res

    def _start_writer(self) -> None:
        """The checkpoint writer. Ray restarts a killed writer; the store keeps the last complete version
        meanwhile. It takes the store's lease as this run's owner; a restarted one takes it over
        (checkpoint_store/lease.py)."""
        import ray

        cfg, name = self.cfg, self.cfg.run.name
        self.writer = ray.remote(num_cpus=0, max_concurrency=4, max_restarts=-1)(CheckpointWriter).options(
            name=f"{name}-checkpoint").remote(cfg.store_uri(), cfg.retention, owner=self.owner, run=name,
                                              defer_lease_error=True)
        problem = self._writer("lease_problem")  # another run took the store since train()'s check
        if problem:
            raise LeaseHeldError(problem)

    def _start_learner(self, learner_resources: dict[str, float]) -> None:
        """The learner's node first (where a probe with its resources lands), then the replay actor pinned
        there, then the learner with the MKL preload its node decides, and its loop."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from cluster.runtime.actors import LearnerActor

        cfg, name, gpus = self.cfg, self.cfg.run.name, self._learner_gpu
        state, files = (self.restored.state, self.restored.files) if self.restored else (None, None)
        learner_cls = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0, resources=learner_resources,
                                 max_concurrency=8)(LearnerActor)
        probe = ray.remote(num_cpus=0, num_gpus=1 if gpus else 0, resources=learner_resources)(_node_id).remote()
        affinity = NodeAffinitySchedulingStrategy(node_id=ray.get(probe), soft=False)
        # Ingestion only (the learner holds the run's one replay memory): it resumes the chunk count.
        first = saved_chunks(files) if files else 0
        self.replay = replay_actor_class().options(name=f"{name}-replay", scheduling_strategy=affinity).remote(
            cfg.replay, cfg.network.vector_dim, first_cursor=first)
        # A CPU learner on an AMD CPU with AVX-512: MKL's AVX-512 kernels (learner/common/mkl_amd.py), decided on
        # its node, which builds the library there. ({} elsewhere, or with FLEET_MKL_AVX512=0.)
        preload = {} if gpus else ray.get(ray.remote(num_cpus=0)(_mkl_preload_env).options(
            scheduling_strategy=affinity).remote(os.environ.get(mkl_amd.ENV, "1")))
        options = {"runtime_env": {"env_vars": preload}} if preload else {}
        self.learner = learner_cls.options(name=f"{name}-learner", scheduling_strategy=affinity, **options).remote(
            cfg, self.replay, self.writer, state, files or None)
        self.learner_run = self.learner.run.remote()

    def _start_workers(self) -> None:
        """The rollout workers and their loops. A killed worker is restarted by Ray, and its interrupted loop
        call re-run on the new instance."""
        import ray

        from cluster.runtime.actors import WorkerActor

        cfg, name = self.cfg, self.cfg.run.name
        worker_cls = ray.remote(num_cpus=1, resources=cfg.worker_resources(), max_restarts=-1, max_task_retries=-1,
                                max_concurrency=2)(WorkerActor)
        # By name, not handle: a handle in a restartable actor's constructor arguments is a reference Ray
        # cannot restore (ray-project/ray#53727), and it says so with an ERROR line at every start.
        self.workers = [worker_cls.options(name=f"{name}-worker-{i}").remote(
            i, cfg, f"{name}-replay", f"{name}-learner") for i in range(cfg.run.workers)]
        self._runs = {w.run.remote(): i for i, w in enumerate(self.workers)}

    def _placement(self) -> dict[str, Any]:
        """The node id each actor runs on (also in the run summary). Workers report theirs to the learner
        when they start (`worker_nodes`): a worker waiting for a node with its resources does not hold
        up the run, and a restarted one is found where it runs now."""
        import ray

        def where(actor: Any) -> Any:
            return actor.__ray_call__.remote(lambda _self: _node_id())

        refs = {"learner": where(self.learner), "replay": where(self.replay), "checkpoint": where(self.writer)}
        out: dict[str, Any] = {k: ray.get(v, timeout=300) for k, v in refs.items()}
        out["workers"] = [self._worker_nodes.get(i) for i in range(len(self.workers))]
        return out

    def placement_text(self) -> list[str]:
        """Where each actor runs, by node address and host name, with the resources it holds."""
        import ray

        cfg, p = self.cfg, self.placement
        if not p:
            return []
        nodes = {n["NodeID"]: _node_text(n) for n in ray.nodes()}
        learner_res = ("1 CPU" + (", 1 GPU" if self._learner_gpu else "")
                       + (f", 1 {cfg.run.learner_resource}" if cfg.run.learner_resource else "")
                       + f", {cfg.learner.threads()} torch threads")
        worker_res = ", ".join(["1 CPU"] + [f"{v:g} {k}" for k, v in cfg.worker_resources().items()])
        lines = [f"learner      on {nodes.get(p['learner'], p['learner'])}: {learner_res}",
                 f"replay       on {nodes.get(p['replay'], p['replay'])}: 0 CPU",
                 f"checkpoint   on {nodes.get(p['checkpoint'], p['checkpoint'])}: 0 CPU"]
        for node in sorted(set(p["workers"])):
            lines.append(f"{p['workers'].count(node)} worker(s) on {nodes.get(node, node)}: {worker_res} each")
        return lines

    def poll(self, status: Status, metrics: MetricsLog) -> None:
        import ray
        from ray.exceptions import RayActorError

        ready, _ = ray.wait([self.learner_run], timeout=0)
        if ready:
            try:
                ray.get(self.learner_run)  # raises the learner's error, if any
            except RayActorError as exc:  # its loop is gone, whatever the actor's state: no transient
                self._learner_failed(exc, status, transient=False)
            raise RuntimeError("the learner loop stopped unexpectedly")
        self._watch_nodes(status)
        done, _ = ray.wait(list(self._runs), timeout=0.5, num_returns=1)
        for ref in done:
            i = self._runs.pop(ref)
            try:
                ray.get(ref)
                log.warning("worker %d stopped by itself; starting it again", i)
            except RayActorError as exc:
                # Retries ran out for this call; Ray still restarts the actor, the driver re-issues its loop.
                log.warning("worker %d died (%s); Ray restarts it", i, type(exc).__name__)
            self._runs[self.workers[i].run.remote()] = i
        _absorb_reports(self._drain(), status, metrics, self._returns)
        self._update(status, metrics)

    def _drain(self, timeout_s: float = 1.0) -> list[Any]:
        """The workers' new reports. A worker that does not answer in `timeout_s` (waiting for a node
        with its resources, or being restarted on one) keeps its call for the next poll."""
        import ray
        from ray.exceptions import RayActorError

        for i, w in enumerate(self.workers):
            if i not in self._drains:
                self._drains[i] = w.drain_reports.remote()
        pending = {ref: i for i, ref in self._drains.items()}
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=timeout_s)
        reports = []
        for ref in ready:
            del self._drains[pending[ref]]
            try:
                reports.extend(ray.get(ref))
            except RayActorError:
                continue
        return reports

    def _watch_nodes(self, status: Status, force: bool = False) -> None:
        """Record each node lost during the run with the workers that were on it (Ray restarts those
        on the nodes left that have their resources; the summary's `node_losses`)."""
        assert self.watch is not None
        for node in self.watch.poll(force=force):
            workers = sorted(self._ran_on.get(node["NodeID"], ()))
            others = [k for k in ("learner", "replay", "checkpoint") if self.placement.get(k) == node["NodeID"]]
            self.node_losses.append({"node": describe(node), "node_id": node["NodeID"],
                                     "at_env_steps": status.env_steps, "workers": workers, "actors": others})
            log.warning("node %s lost at %d env steps: worker(s) %s%s were on it", describe(node),
                        status.env_steps, workers or "none", f" and the {', '.join(others)}" if others else "")

    def _learner_failed(self, exc: Exception, status: Status, transient: bool = True,
                        patience_s: float = 120.0) -> None:
        """The learner did not answer: raise NodeLost when its node is gone, else return when it answers
        again (ActorUnavailableError on a call, when `transient`: a moment's disconnection) or re-raise
        `exc` (it died on its own).

        Ray tells callers at once that an actor is unreachable, and marks its node dead only after the
        missed health checks (about 15 to 30 s with its defaults): waited for here, at most `patience_s`."""
        import ray

        assert self.watch is not None
        node = self.placement.get("learner", "")
        deadline = time.monotonic() + patience_s
        while time.monotonic() < deadline:
            if self.watch.is_dead(node):
                self.learner_lost = True
                self._watch_nodes(status)
                raise NodeLost(self._lost_message(node, status)) from None
            state = _actor_state(self.learner)
            if transient and state == "ALIVE" and not isinstance(exc, ray.exceptions.ActorDiedError):
                return
            if state == "DEAD" and not self.watch.is_dead(node):
                raise exc
            time.sleep(1.0)
        raise exc

    def _lost_message(self, node_id: str, status: Status) -> str:
        """One line: what was lost, what the store keeps, how to go on."""
        node = next((n for n in self.watch.lost if n["NodeID"] == node_id), {"NodeID": node_id}) \
            if self.watch else {"NodeID": node_id}
        try:
            kept = SnapshotStore(self.cfg.store_uri(), create=False).manifest("latest")
            keeps = f"keeps {kept.version} ({kept.env_steps:,} env steps, {kept.learner_updates:,} updates)"
        except Exception:  # noqa: BLE001 - no version yet, or the store cannot be read from here
            keeps = "holds no snapshot of this run yet"
        return (f"the learner's node {describe(node)} was lost at {status.env_steps:,} env steps and "
                f"{status.updates:,} updates; the store {redact(self.cfg.store_uri())} {keeps}: run the same "
                f"command with --resume auto to continue from its latest snapshot")

    def _learner_stats(self, status: Status) -> RunStats | None:
        import ray
        from ray.exceptions import RayActorError

        try:
            stats = ray.get(self.learner.stats.remote())
        except RayActorError as exc:
            self._learner_failed(exc, status)
            return None
        status.worker_restarts = stats.worker_restarts
        status.collected = stats.collected_steps
        status.steps_ahead = stats.steps_ahead
        status.workers_paused_s = stats.workers_paused_s
        self._worker_nodes = stats.worker_nodes
        for i, node in self._worker_nodes.items():
            self._ran_on.setdefault(node, set()).add(i)
        return stats

    def _writer_status(self) -> WriterStatus | None:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        try:
            return ray.get(self.writer.status.remote(), timeout=30)
        except (RayActorError, GetTimeoutError):
            return None

    def stop_workers(self, timeout_s: float = 60.0) -> None:
        """Ask every rollout worker to end its loop, and wait (bounded) until the loops have ended.

        The learner is told first: a worker Ray restarts (its node lost) re-runs its loop, and ends it at
        its first ask, whatever became of its stop call (before, the loop went on collecting through the
        catch-up, which then owed updates for minutes)."""
        import ray

        if not self.learner_lost:
            self.learner.end_collection.remote()
        for w in self.workers:
            w.stop.remote()
        ray.wait(list(self._runs), num_returns=len(self._runs), timeout=timeout_s)

    def finish(self, status: Status, metrics: MetricsLog, catch_up: bool = True,
               snapshot: bool = True) -> dict[str, Any]:
        import ray
        from ray.exceptions import GetTimeoutError

        if not self.workers:
            return {"placement": self.placement, "placement_text": self.placement_text()}
        if self.learner_lost:  # nothing to catch up or snapshot: the last stored version is what is left
            self.stop_workers(timeout_s=30)
            self._watch_nodes(status, force=True)
            self.placement["workers"] = [self._worker_nodes.get(i) for i in range(len(self.workers))]
            return {"placement": self.placement, "placement_text": self.placement_text()}
        self.stop_workers()
        self._watch_nodes(status, force=True)  # a node lost near the end, seen once its workers' loops ended
        self.learner.stop.remote()
        ray.get(self.learner_run, timeout=120)
        if not snapshot:  # the store is failing: nothing more to write there
            self._update(status, metrics, check_store=False)
            return {"placement": self.placement, "placement_text": self.placement_text()}
        # The catch-up takes a minute or more at the default ratio: the progress display follows its updates.
        caught_up = self.learner.catch_up.remote(timeout_s=600, updates=catch_up)
        final = get_reporting(caught_up, lambda: self._update(status, metrics, check_store=False)).learner_updates

        def wait(left: float) -> Manifest | None:
            try:  # the writer's own wait returns None after `left`; ray.get is bounded should the call hang
                return self._writer("wait", left, get_timeout_s=left + 30)
            except GetTimeoutError:
                return None

        def resubmit(left: float) -> None:
            try:
                ray.get(self.learner.catch_up.remote(timeout_s=600, updates=False), timeout=max(left, 1.0))
            except GetTimeoutError:
                pass

        timeout_s = self.cfg.run.store_timeout_s
        manifest = await_final_snapshot(wait, resubmit, final, timeout_s)
        self._update(status, metrics, check_store=False)
        self.placement["workers"] = [self._worker_nodes.get(i) for i in range(len(self.workers))]
        result: dict[str, Any] = {"placement": self.placement, "placement_text": self.placement_text()}
        if manifest is None:
            result["error"] = final_not_stored(final, timeout_s, status.last_snapshot, redact(self.cfg.store_uri()))
            return result
        result["version"] = manifest.version
        return result

    def _writer(self, method: str, *args: Any, patience_s: float = 120.0, get_timeout_s: float | None = None) -> Any:
        """Call the checkpoint writer, waiting out a restart (Ray restarts it when it is killed); each
        call waited for at most `get_timeout_s` (GetTimeoutError)."""
        import ray
        from ray.exceptions import RayActorError

        deadline = time.monotonic() + patience_s
        warned = False
        while True:
            try:
                return ray.get(getattr(self.writer, method).remote(*args), timeout=get_timeout_s)
            except RayActorError as exc:  # ActorUnavailableError included: restarting
                # Past the patience, wait on only while Ray says the writer is coming back: a restart on a
                # loaded machine may take minutes, a dead actor never returns.
                if time.monotonic() > deadline and _actor_state(self.writer) not in ("RESTARTING", "PENDING_CREATION"):
                    raise
                if not warned:
                    log.warning("checkpoint writer unavailable (%s); waiting while Ray restarts it",
                                type(exc).__name__)
                    warned = True
                time.sleep(0.5)

    def evaluator(self, best_score: float) -> PeriodicEval:
        backend = RayEval(self.cfg) if self.cfg.eval.every_updates > 0 else InlineEval(None)
        return PeriodicEval(self.cfg, backend, self._tag_best, best_score)

    def _tag_best(self, version: str, score: float) -> None:
        self._writer("tag", version, BEST_TAG)
        self.learner.note_best_eval.remote(score)

    def close(self) -> None:
        """Every actor of the run goes, also after a failure; Ray too when this run started it."""
        import ray

        writer = getattr(self, "writer", None)
        if writer is not None:  # its lease first, so the same command can run again at once (--resume auto)
            try:
                ray.get(writer.release_lease.remote(), timeout=15)
            except Exception:  # noqa: BLE001 - gone with its node, or stuck: the driver releases it below
                pass
        for actor in [*self.workers, getattr(self, "learner", None), getattr(self, "replay", None), writer]:
            if actor is not None:
                ray.kill(actor)
        if writer is not None:
            self._release_lease()
        # The learner's node lost: this driver is done with the cluster; disconnecting stops Ray's streamed
        # worker logs (recovering lost objects, ...), which would otherwise print after the run's one line.
        if self._started_ray or self.learner_lost:
            ray.shutdown()

    def _release_lease(self) -> None:
        """Delete the store's lease if it still names this run (a writer that died with its node), bounded:
        otherwise it expires on its own after its TTL. A writer of this run still alive somewhere (a node
        cut off, not dead) finds it gone at its next renewal and stops saving."""
        uri = self.cfg.store_uri()
        try:
            if bounded(lambda: release_owner(Root(uri, timeout_s=None), self.owner), 20.0,
                       lambda: TimeoutError("the store did not answer")):
                log.info("released this run's lease on %s", redact(uri))
        except Exception as exc:  # noqa: BLE001 - best effort: the lease expires on its own
            log.warning("could not release this run's lease on %s (%s): it expires on its own", redact(uri), exc)


def _actor_state(actor: Any) -> str:
    """Ray's state of an actor (ALIVE, RESTARTING, DEAD, ...), or UNKNOWN when it cannot be read."""
    try:  # the GCS's actor table: works without the dashboard that ray.util.state needs
        from ray._private.state import state

        return str(state.actor_table(actor._actor_id.hex()).get("State", "UNKNOWN"))
    except Exception:  # noqa: BLE001 - a private API, read best effort
        return "UNKNOWN"


def _node_text(node: dict[str, Any]) -> str:
    """A node as the summary names it: address (host name, and the node name where it says more), and the
    start of its node id, which tells apart nodes that share an address (several on one machine)."""
    addr, host, name = (node.get(k) or "?" for k in ("NodeManagerAddress", "NodeManagerHostname", "NodeName"))
    label = host if name in (addr, host) else f"{host}, {name}"
    return f"{addr} ({label}) node {str(node.get('NodeID', '?'))[:8]}"


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _mkl_preload_env(setting: str) -> dict[str, str]:
    """On the learner's node: the environment that preloads learner/common/mkl_amd.py's library, under the
    driver's FLEET_MKL_AVX512 setting ({} where it does not apply, or on any error there)."""
    try:
        return mkl_amd.preload_env(setting=setting)
    except Exception:  # noqa: BLE001 -- a speed-up only: never the reason a run does not start
        log.warning("no MKL AVX-512 preload for the learner", exc_info=True)
        return {}
