"""`fleet bench learning`: wall time to a driving agent, ours (Ray runtime) against the peers a user would pick
(SB3 TD3 and SAC, RLlib SAC), on the same env, machine and budget."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from cluster.cli import Commands
from learner.common.errors import UserError

DEFAULT_PEER_SEEDS = 2
"""Training seeds per peer by default (issue 28: 3 seeds of ours, 2 of each peer)."""


def register(cli: Commands) -> None:
    p = cli.bench("learning", "train ours (Ray runtime) and baselines for the same wall time; curves "
                  "of the deterministic policy on validation episodes, time to a driving level", run)
    p.add_argument("--seeds", type=int, default=3, help="training seeds per system (first .. first+N-1)")
    p.add_argument("--first-seed", type=int, default=10, metavar="S",
                   help="first training seed (default 10: seeds 0-2 chose the defaults; 10 and up report them)")
    p.add_argument("--minutes", type=float, default=30.0,
                   help="training wall time per system and seed (default 30: issue 28's budget)")
    p.add_argument("--eval-every", type=float, default=5.0, metavar="MIN",
                   help="minutes of training between the evaluated policies")
    p.add_argument("--episodes", type=int, default=20, help="validation episodes per point")
    p.add_argument("--baselines", default="sb3-td3,sb3-sac,rllib-sac",
                   help="comma-separated peers: sb3-td3, sb3-sac, rllib-sac (sb3: sb3-td3), or 'none'")
    p.add_argument("--baseline-seeds", type=int, metavar="N",
                   help="train the baselines on the first N seeds only (default: 2, or --seeds if fewer)")
    p.add_argument("--peers-only", action="store_true",
                   help="train the baselines only, not ours (to look into a peer; the level is still the scripted "
                        "driver's)")
    p.add_argument("--td3-action-noise", type=float, metavar="STD",
                   help="give SB3 TD3 Gaussian action noise of this standard deviation after its warm-up "
                        "(NormalActionNoise, as SB3's documentation does; its class default is none, a "
                        "deterministic policy): a diagnosis of the peer, not its comparison setting")
    p.add_argument("--config", help="experiment YAML (default: the packaged default)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key for every system (e.g. agent.batch_size=32)")
    p.add_argument("--out", help="output folder (default: runs/bench-learning-<time>)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--final", action="store_true",
                   help="also drive each run's last policy on the test seeds (eval.test_seed) of every training and "
                        "held-out road layout, beside the scripted driver on the same episodes: for reporting only, "
                        "each use recorded in <runs_dir>/test-set-uses.jsonl")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted benchmark in --out: keep the curves its learning.json "
                        "holds, train only the systems and seeds it lacks (same command required)")


def run(args: argparse.Namespace) -> int:
    from cluster.bench import learning_run as lb
    from cluster.cli.train import overrides
    from cluster.runtime import experiment
    from cluster.runtime.run import scripted_reference

    if args.first_seed < 0:
        raise UserError("--first-seed must be >= 0")
    if args.seeds < 1 or args.minutes <= 0 or args.eval_every <= 0 or args.episodes < 1:
        raise UserError("--seeds and --episodes must be >= 1, --minutes and --eval-every > 0")
    if args.baseline_seeds is None:
        args.baseline_seeds = min(DEFAULT_PEER_SEEDS, args.seeds)
    if not 0 <= args.baseline_seeds <= args.seeds:
        raise UserError(f"--baseline-seeds must be between 0 and --seeds ({args.seeds})")
    baselines = [{"sb3": "sb3-td3"}.get(b, b) for b in args.baselines.split(",") if b and b != "none"]
    known = [*lb.PEERS, "rllib-sac"]
    unknown = sorted(set(baselines) - set(known))
    if unknown:
        raise UserError(f"--baselines: unknown {unknown}; known: {', '.join(known)}, none")
    if set(baselines) & set(lb.PEERS) and (why := lb.sb3_available()):
        raise UserError(why)
    args.env = args.workers = args.steps = args.store = args.name = None
    cfg = experiment.load(args.config, overrides(args))
    if cfg.run.env != "embedded":
        raise UserError("fleet bench learning runs on the embedded simulator (run.env = embedded)")
    if args.td3_action_noise is not None and (args.td3_action_noise <= 0 or "sb3-td3" not in baselines):
        raise UserError("--td3-action-noise needs a standard deviation > 0 and sb3-td3 among --baselines")
    if args.peers_only and not (baselines and args.baseline_seeds):
        raise UserError("--peers-only needs a baseline to train (--baselines, --baseline-seeds)")
    if args.resume and not args.out:
        raise UserError("--resume needs --out, the folder of the benchmark to continue")
    out = Path(args.out or Path(cfg.run.runs_dir) / time.strftime("bench-learning-%Y%m%d-%H%M%S"))
    seeds = cfg.eval.seeds(args.episodes)
    lb.say(f"scripted reference on {len(seeds)} validation episodes")
    reference = scripted_reference(cfg, len(seeds))
    level = lb.LEVEL_RETURN_FRACTION * reference["mean_return"]
    here = _machine()
    meta = {"command": "fleet bench learning " + " ".join(_argv(args)), "machine": here,
            "peer_arguments": {b: _peer_arguments(b, cfg, args) for b in baselines},
            "minutes": args.minutes, "eval_every_min": args.eval_every, "episodes": args.episodes,
            "eval_policy": cfg.eval.policy, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "revisions": [_revision()]}
    if args.final:
        from cluster.runtime.evaluation import TEST_SET_LOG, record_test_use

        uses = record_test_use(Path(cfg.run.runs_dir), {"command": meta["command"], "layouts": list(lb.final_layouts()),
                                                       "first_seed": cfg.eval.test_seed})
        lb.say(f"final: test seeds from {cfg.eval.test_seed:,} on {', '.join(lb.final_layouts())}; use {uses} of "
               f"the test set, recorded in {Path(cfg.run.runs_dir) / TEST_SET_LOG}; the scripted driver on them")
        meta["final_reference"] = lb.final_reference(cfg, args.episodes)
    curves: list = []
    if args.resume:
        meta, curves = _resumed(out, meta)
    done = {(c.system, c.seed) for c in curves}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        peers = baselines if seed - args.first_seed < args.baseline_seeds else []
        for system in ([] if args.peers_only else ["ours"]) + peers:
            if (system, seed) in done:
                continue
            curve = _train(system, cfg, seed, args, out)
            curve.machine = here  # a benchmark resumed elsewhere may run on another machine: each run says
            curves.append(lb.finish_curve(curve, level))
            lb.report(curves, reference, meta, out)  # each finished curve survives an interrupted benchmark
    result = lb.report(curves, reference, meta, out)
    if args.json:
        print(json.dumps(result))
    else:
        print((out / "learning.md").read_text())
        print(f"written: {out / 'learning.json'}, {out / 'learning.md'}, {out / 'learning.png'}")
    return 0


def _train(system: str, cfg: Any, seed: int, args: argparse.Namespace, out: Path) -> Any:
    """One system's training on one seed, its policy evaluated at every mark: a `learning_run.Curve`."""
    from cluster.bench import learning_run as lb

    if system == "ours":
        return lb.train_ours(cfg, seed, args.minutes, args.eval_every, out, args.episodes, args.final)
    if system == "rllib-sac":
        from cluster.bench.peers import rllib_sac

        return rllib_sac.train(cfg, seed, args.minutes, args.eval_every, args.episodes, args.final)
    return lb.train_sb3(cfg, seed, args.minutes, args.eval_every, args.episodes, system, args.final,
                        _action_noise(system, args))


def _peer_arguments(system: str, cfg: Any, args: argparse.Namespace) -> dict[str, Any]:
    from cluster.bench import learning_run as lb

    if system == "rllib-sac":
        from cluster.bench.peers import rllib_sac

        return rllib_sac.rllib_arguments(cfg)
    return lb.sb3_arguments(cfg, _action_noise(system, args))


def _action_noise(system: str, args: argparse.Namespace) -> float | None:
    """The `--td3-action-noise` an SB3 peer trains with: TD3's alone."""
    return args.td3_action_noise if system == "sb3-td3" else None


def _resumed(out: Path, meta: dict) -> tuple[dict, list]:
    """The earlier invocation's meta (with this one's revision and start added) and its finished curves."""
    from cluster.bench import learning_run as lb

    path = out / "learning.json"
    if not path.is_file():
        raise UserError(f"--resume: {path} does not exist (nothing to continue; drop --resume to start)")
    saved = json.loads(path.read_text())
    if saved.get("command") != meta["command"]:
        raise UserError(f"--resume: {path} was written by `{saved.get('command')}`, not `{meta['command']}`; "
                        "a benchmark continues only with the command that started it")
    if saved.get("eval_policy", "online") != meta["eval_policy"]:  # before eval.policy, the online actor
        raise UserError(f"--resume: {path} evaluated the {saved.get('eval_policy', 'online')} actor, this invocation "
                        f"would evaluate the {meta['eval_policy']} one (eval.policy); a benchmark's points are all of "
                        "one actor: finish it at the revision that started it, or start it again without --resume")
    curves = [lb.Curve(c["system"], c["seed"], [lb.Point(**p) for p in c["points"]], c.get("minutes_to_level"),
                       c.get("final", {}), [lb.Point(**p) for p in c.get("other_actor", [])], c.get("machine", ""))
              for c in saved.get("curves", [])]
    # A curve with a point short of the last mark was cut by an interruption: it is trained again.
    last = lb.marks(meta["minutes"], meta["eval_every_min"])[-1]
    cut = [c for c in curves if not c.points or c.points[-1].minutes < last - 1e-6]
    curves = [c for c in curves if c not in cut]
    if cut:
        lb.say("--resume: training again what an interruption cut short: "
               + ", ".join(f"{c.system} seed {c.seed}" for c in cut))
    kept = {k: saved[k] for k in ("command", "machine", "minutes", "eval_every_min", "episodes", "started",
                                  "peer_arguments", "peer_arguments_before", "final_reference", "eval_policy")
            if k in saved}
    if saved.get("peer_arguments") != json.loads(json.dumps(meta["peer_arguments"], default=str)):
        # A peer's settings corrected between the revisions (RLlib's training_intensity, 0b4202f): the runs
        # from here have this invocation's, and the record keeps what the earlier revisions gave.
        kept["peer_arguments_before"] = [*saved.get("peer_arguments_before", []),
                                         {"revisions": saved.get("revisions", []),
                                          "peer_arguments": saved.get("peer_arguments")}]
        kept["peer_arguments"] = meta["peer_arguments"]
        lb.say("--resume: the peers' arguments differ from the record's; the runs from here use this "
               "revision's, the earlier ones are kept as peer_arguments_before")
    kept["revisions"] = list(saved.get("revisions", [])) + [r for r in meta["revisions"]
                                                             if r not in saved.get("revisions", [])]
    kept["resumed"] = list(saved.get("resumed", [])) + [meta["started"]]
    lb.say(f"resuming {out}: {len(curves)} finished curve(s) kept "
           f"({', '.join(f'{c.system} seed {c.seed}' for c in curves) or 'none'})")
    return kept, curves


def _revision() -> str:
    """The git commit of this checkout ('+' when it has uncommitted changes), or 'unknown'."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+" if dirty else "")


def _argv(args: argparse.Namespace) -> list[str]:
    out = [f"--seeds {args.seeds}", f"--first-seed {args.first_seed}"]
    out += [f"--minutes {args.minutes:g}", f"--eval-every {args.eval_every:g}",
           f"--episodes {args.episodes}", f"--baselines {args.baselines}"]
    if args.baselines != "none" and args.baseline_seeds != args.seeds:  # absent where the peers train every seed
        out.append(f"--baseline-seeds {args.baseline_seeds}")
    if args.peers_only:
        out.append("--peers-only")
    if args.td3_action_noise is not None:
        out.append(f"--td3-action-noise {args.td3_action_noise:g}")
    out += [f"--set {s}" for s in args.set]
    if args.config:
        out.append(f"--config {args.config}")
    return out


def _machine(cpuinfo: str | None = None) -> str:
    """The machine in words, with what decides a CPU learner's speed here: the CPU model, its widest vector
    instructions, and whether the learners get MKL's AVX-512 kernels (learner/common/mkl_amd.py: ours on
    its Ray node, the peers in this process, which `fleet bench learning` loads it into)."""
    import torch

    from learner.common import mkl_amd

    cpu = mkl_amd.cpu_fields(cpuinfo)
    model, flags = cpu["model name"] or platform.processor() or "unknown CPU", cpu["flags"]
    isa = "AVX-512" if "avx512f" in flags else "AVX2 only" if "avx2" in flags else "no AVX2"
    mkl = ", the learners on MKL's AVX-512 kernels" if mkl_amd.cpu_qualifies(cpuinfo) and mkl_amd.enabled() else ""
    return (f"{platform.machine()} {os.cpu_count()} cores ({model}, {isa}{mkl}), Python "
            f"{platform.python_version()}, torch {torch.__version__}, CPU")
