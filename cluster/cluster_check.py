"""`make cluster-check`: a real `ray up` of cluster/loopback.yaml on this machine, and what a user then does.

Three Ray nodes on loopback (head 127.0.0.1, workers 127.0.0.2 and 127.0.0.3), brought up over SSH by
Ray's own cluster launcher (the `local` provider, as cluster/onprem.yaml), then:

  1. `ray job submit` a short `fleet train`: its rollout workers on the worker nodes, its learner on the head;
  2. `fleet evaluate` as a second job, on the snapshot the first wrote;
  3. a third training job stopped with `ray job stop`: it must end with a final snapshot, and the time it
     takes is measured;
  4. `ray down -y`, which must leave nothing running.

Between the steps it checks that no listener of the cluster is outside 127.0.0.0/8, and that the GCS and
the job server refuse a client without the cluster's token. Each step is printed with its time; the
transcript and the logs go to --out. Everything it creates (an SSH server on 127.0.0.1-3:22 with a host
key of its own, the user `fleetcheck` with a key made for this run, that user's environment) is removed
at the end, also after a failure. Needs root (to add the user and start sshd), openssh-server and rsync
(Debian's packages), and Debian's python3.X of this Python's version. Linux only.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from learner.common.errors import FleetError

USER = "fleetcheck"
HEAD, WORKERS = "127.0.0.1", ("127.0.0.2", "127.0.0.3")
DASHBOARD = "http://127.0.0.1:8265"
GCS = "127.0.0.1:6379"
REPO = Path(__file__).resolve().parent.parent
YAML = "cluster/loopback.yaml"


class CheckFailed(FleetError, RuntimeError):
    """A step of the check did not do what it must; the message says what."""


@dataclass
class Transcript:
    out: Path
    start: float = field(default_factory=time.monotonic)
    lines: list[str] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)

    def say(self, text: str) -> None:
        line = f"[{time.monotonic() - self.start:7.1f} s] {text}"
        print(line, flush=True)
        self.lines.append(line)

    def step(self, name: str) -> _Step:
        return _Step(self, name)

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "transcript.txt").write_text("\n".join(self.lines) + "\n")
        (self.out / "result.json").write_text(json.dumps(self.results, indent=2, default=str) + "\n")


class _Step:
    def __init__(self, t: Transcript, name: str) -> None:
        self.t, self.name = t, name

    def __enter__(self) -> _Step:
        self.t0 = time.monotonic()
        self.t.say(f"{self.name} ...")
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        took = time.monotonic() - self.t0
        self.t.results.setdefault("steps", {})[self.name] = round(took, 1)
        self.t.say(f"{self.name}: {'done' if kind is None else 'FAILED'} in {took:.1f} s")


def run(cmd: list[str], *, user: bool = False, timeout: float = 120, check: bool = True, env: dict[str, str] | None = None,
        cwd: Path | None = None, log: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command (as the check's user when `user`), bounded in time; its output goes to `log` too."""
    if user:
        home = Path(pwd.getpwnam(USER).pw_dir)
        base = {"HOME": str(home), "USER": USER, "LOGNAME": USER, "LANG": "C.UTF-8",
                "PATH": f"{home}/fleet-venv/bin:/usr/bin:/bin", "RAY_TMPDIR": f"{home}/ray-tmp",
                "RAY_AUTH_MODE": "token"}
        base.update(env or {})
        cmd = ["runuser", "-u", USER, "--", "env", "-i", *(f"{k}={v}" for k, v in base.items()), *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=None if user else {**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    if log is not None:
        with log.open("a") as f:
            f.write(f"$ {' '.join(cmd[cmd.index('--') + 1:] if user else cmd)}\n{proc.stdout}{proc.stderr}\n")
    if check and proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise CheckFailed(f"`{' '.join(cmd[-6:])}` exited {proc.returncode}:\n  " + "\n  ".join(tail))
    return proc


class Machine:
    """The check's SSH server, user, key, environment and token; `teardown` removes all of them."""

    def __init__(self, t: Transcript) -> None:
        self.t = t
        self.work = Path(f"/run/fleet-cluster-check-{os.getpid()}")
        self.sshd: subprocess.Popen[bytes] | None = None
        self.created_user = False

    @property
    def home(self) -> Path:
        return Path(pwd.getpwnam(USER).pw_dir)

    def preflight(self) -> None:
        missing = [tool for tool in ("/usr/sbin/sshd", "ssh", "ssh-keygen", "rsync", "runuser", "ss", "git")
                   if shutil.which(tool) is None]
        if os.geteuid() != 0:
            raise CheckFailed("needs root: it adds the user `fleetcheck` and starts an SSH server on 127.0.0.1-3")
        if missing:
            raise CheckFailed(f"missing {', '.join(missing)}: apt-get install -y openssh-server openssh-client "
                              "rsync iproute2 git")
        if not Path(self.system_python()).exists():
            raise CheckFailed(f"missing {self.system_python()} (Debian's python{sys.version_info[0]}."
                              f"{sys.version_info[1]}, same version as this Python)")

    @staticmethod
    def system_python() -> str:
        return f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}"

    def setup(self) -> None:
        self.work.mkdir(mode=0o700)
        try:
            pwd.getpwnam(USER)
            run(["userdel", "-r", USER], check=False)  # a leftover of an interrupted check
        except KeyError:
            pass
        run(["useradd", "-m", "-s", "/bin/bash", USER])
        run(["usermod", "-p", "*", USER])  # no password, but not locked: sshd admits its key
        self.created_user = True
        home = self.home
        # The key made for this run; it is the only way in, and goes with the user at the end.
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleet-cluster-check", "-f",
             str(self.work / "key")])
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.work / "host_key")])
        ssh = home / ".ssh"
        ssh.mkdir(mode=0o700)
        shutil.copy(self.work / "key.pub", ssh / "authorized_keys")
        shutil.copy(self.work / "key", ssh / "fleet-cluster-check")
        # The cluster's token, as `ray get-auth-token --generate` makes it, but mode 0600 from the start.
        ray_dir = home / ".ray"
        ray_dir.mkdir(mode=0o700)
        fd = os.open(ray_dir / "auth_token", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, secrets.token_hex(32).encode())
        os.close(fd)
        (home / "ray-tmp").mkdir(mode=0o700)
        self._environment(home)
        self._checkout(home / "checkout")
        for path in [ssh, *ssh.iterdir(), ray_dir, *ray_dir.iterdir()]:
            os.chmod(path, 0o700 if path.is_dir() else 0o600)
        run(["chown", "-R", f"{USER}:{USER}", str(home)])
        self._start_sshd()

    def _environment(self, home: Path) -> None:
        """~/fleet-venv: Debian's Python of this version over this environment's installed packages (the
        same wheels), plus cluster/runtime/loopback_ray.py; the check's user cannot run a Python under /root."""
        site = Path(sysconfig.get_paths()["purelib"])
        venv = home / "fleet-venv"
        run([self.system_python(), "-m", "venv", "--without-pip", str(venv)])
        target = venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
        probe = run(["runuser", "-u", USER, "--", "test", "-r", str(site / "ray" / "__init__.py")], check=False)
        if probe.returncode != 0:  # this environment is not readable by others: a hard-linked copy is
            packages = home / "site-packages"
            if run(["cp", "-al", str(site), str(packages)], check=False, timeout=600).returncode != 0:
                run(["cp", "-a", str(site), str(packages)], timeout=900)  # another filesystem: a real copy
            site = packages
        (target / "fleet-checkout.pth").write_text(f"import site; site.addsitedir({str(site)!r})\n")
        shutil.copy(REPO / "cluster" / "runtime" / "loopback_ray.py", target / "fleet_loopback_ray.py")
        (target / "fleet-loopback.pth").write_text("import fleet_loopback_ray; fleet_loopback_ray.install()\n")
        for name, entry in (("ray", "ray.scripts.scripts"), ("fleet", "cluster.cli")):
            script = venv / "bin" / name
            script.write_text(f"#!{venv}/bin/python\nimport sys\nfrom {entry} import main\nsys.exit(main())\n")
            script.chmod(0o755)

    def _checkout(self, dest: Path) -> None:
        """What `ray up` syncs and `--working-dir .` uploads: the checkout's tracked and unignored files."""
        files = run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO).stdout.split("\0")
        for rel in filter(None, files):
            src = REPO / rel
            if src.is_file():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / rel)

    def _start_sshd(self) -> None:
        config = self.work / "sshd_config"
        config.write_text("\n".join([
            *(f"ListenAddress {ip}" for ip in (HEAD, *WORKERS)), "Port 22",
            f"HostKey {self.work / 'host_key'}", f"PidFile {self.work / 'sshd.pid'}",
            "AuthorizedKeysFile .ssh/authorized_keys", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "PermitRootLogin no", f"AllowUsers {USER}", "UsePAM no",
            "X11Forwarding no", "AllowTcpForwarding local", "PermitTunnel no", "MaxStartups 50:30:100",
            "MaxSessions 50", ""]))
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        run(["/usr/sbin/sshd", "-t", "-f", str(config)])
        self.sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", str(config), "-E", str(self.work / "sshd.log")])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            probe = run(["ssh", "-i", str(self.work / "key"), "-o", "StrictHostKeyChecking=no", "-o",
                         "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5",
                         f"{USER}@{WORKERS[-1]}", "true"], check=False, timeout=15)
            if probe.returncode == 0:
                return
            time.sleep(0.5)
        raise CheckFailed(f"sshd did not admit the check's key within 20 s: {self.work / 'sshd.log'}")

    def user_processes(self) -> list[str]:
        out = run(["ps", "-u", USER, "-o", "pid=,stat=,args="], check=False).stdout.splitlines()
        return [p.strip() for p in out if p.strip() and " Z" not in p[:14]]

    def teardown(self, out: Path) -> None:
        """Stop sshd (by its PID), keep the logs, then remove the user with its key, token and environment.
        Processes the user still has (a failed `ray down`) end first, by PID."""
        if self.created_user:
            home = self.home
            logs = out / "node-logs"
            logs.mkdir(parents=True, exist_ok=True)
            for log in sorted((home / "ray-nodes").glob("*.log")):
                shutil.copy(log, logs / log.name)
            for pid in [int(p.split()[0]) for p in self.user_processes()]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(1)
            run(["userdel", "-r", USER], check=False)
        if self.sshd is not None:
            self.sshd.terminate()
            try:
                self.sshd.wait(10)
            except subprocess.TimeoutExpired:
                self.sshd.kill()
                self.sshd.wait(10)
            if (self.work / "sshd.log").exists():
                shutil.copy(self.work / "sshd.log", out / "sshd.log")
        shutil.rmtree(self.work, ignore_errors=True)


def listeners_outside_loopback(pids: set[int]) -> tuple[list[str], int]:
    """Listening TCP sockets of `pids` (from `ss -ltnpH`) whose address is not in 127.0.0.0/8 or ::1."""
    outside, seen = [], 0
    for line in run(["ss", "-ltnpH"]).stdout.splitlines():
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if not owners & pids:
            continue
        seen += 1
        local = line.split()[3]
        host = local.rsplit(":", 1)[0].strip("[]")
        if host.startswith("::ffff:"):
            host = host[len("::ffff:"):]
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:  # '*' or '0.0.0.0' style wildcards
            loopback = False
        if not loopback:
            outside.append(line.strip())
    return outside, seen


def http_status(url: str, token: str | None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def alive_nodes(token: str) -> list[dict[str, Any]]:
    req = urllib.request.Request(f"{DASHBOARD}/nodes?view=summary", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        data = json.load(resp)
    nodes = data.get("data", {}).get("summary", [])
    return [n for n in nodes if n.get("raylet", {}).get("state") == "ALIVE"]


class Check:
    def __init__(self, out: Path, train_steps: int, workers: int) -> None:
        self.t = Transcript(out)
        self.m = Machine(self.t)
        self.out = out
        self.train_steps, self.workers = train_steps, workers
        self.log = out / "commands.log"

    def user(self, cmd: list[str], timeout: float = 120, check: bool = True,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return run(cmd, user=True, timeout=timeout, check=check, env=env, cwd=self.m.home / "checkout", log=self.log)

    def token(self) -> str:
        return (self.m.home / ".ray" / "auth_token").read_text().strip()

    def main(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        self.t.say(f"cluster check: `ray up {YAML}` on this machine ({os.uname().nodename}), output in {self.out}")
        ok = False
        try:
            self.m.preflight()
            with self.t.step("set up: sshd on 127.0.0.1-3:22, user fleetcheck, its key, environment and token"):
                self.m.setup()
            self.up()
            self.loopback_only("after ray up")
            self.auth()
            run_dir = self.train()
            self.evaluate(run_dir)
            self.stop_job()
            self.loopback_only("after the jobs")
            self.down()
            ok = True
        except (CheckFailed, subprocess.TimeoutExpired) as exc:
            self.t.say(f"FAILED: {exc}")
            self.t.results["error"] = str(exc)
            if self.m.created_user:  # leave nothing running, even after a failure
                self.user(["ray", "down", "-y", YAML], timeout=180, check=False)
        finally:
            self.m.teardown(self.out)
            self.t.results["ok"] = ok
            self.t.say(f"cluster check {'passed' if ok else 'FAILED'} in {time.monotonic() - self.t.start:.0f} s")
            self.t.save()
        return 0 if ok else 1

    def up(self) -> None:
        with self.t.step("ray up -y cluster/loopback.yaml (head 127.0.0.1)"):
            self.user(["ray", "up", "-y", "--no-config-cache", YAML], timeout=300)
        with self.t.step("wait for the autoscaler to start both worker nodes (127.0.0.2, 127.0.0.3)"):
            deadline = time.monotonic() + 240
            nodes: list[dict[str, Any]] = []
            while time.monotonic() < deadline:
                try:
                    nodes = alive_nodes(self.token())
                except (urllib.error.URLError, OSError, ValueError):
                    nodes = []
                if len(nodes) >= 3:
                    break
                time.sleep(2)
            names = sorted(n.get("raylet", {}).get("nodeName", "?") for n in nodes)
            self.t.results["nodes"] = names
            self.t.say(f"alive nodes: {', '.join(names) or 'none'}")
            if len(nodes) < 3:
                raise CheckFailed(f"{len(nodes)} of 3 nodes alive after 240 s")

    def loopback_only(self, when: str) -> None:
        pids = {int(p.split()[0]) for p in self.m.user_processes()}
        if self.m.sshd is not None:
            pids.add(self.m.sshd.pid)
        outside, seen = listeners_outside_loopback(pids)
        self.t.results.setdefault("listeners", {})[when] = {"total": seen, "outside_loopback": outside}
        self.t.say(f"listeners of the cluster {when}: {seen}, outside 127.0.0.0/8: {len(outside)}")
        if outside:
            raise CheckFailed("listeners outside loopback:\n  " + "\n  ".join(outside))

    def auth(self) -> None:
        with self.t.step("without the token, the GCS and the job server refuse"):
            anon = self.user(["ray", "status", "--address", GCS], check=False, timeout=60,
                             env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64})
            wrong = "InvalidAuthToken" in anon.stdout + anon.stderr or "Authentication" in anon.stdout + anon.stderr
            jobs_anon, jobs_token = http_status(f"{DASHBOARD}/api/jobs/", None), http_status(
                f"{DASHBOARD}/api/jobs/", self.token())
            self.t.results["auth"] = {"gcs_wrong_token_refused": anon.returncode != 0 and wrong,
                                      "job_server_no_token": jobs_anon, "job_server_token": jobs_token}
            self.t.say(f"GCS with a wrong token: exit {anon.returncode} ({'refused' if wrong else 'NOT refused'}); "
                       f"job server: {jobs_anon} without the token, {jobs_token} with it")
            if anon.returncode == 0 or not wrong or jobs_anon not in (401, 403) or jobs_token != 200:
                raise CheckFailed("the cluster admits a client without its token")

    def _submit(self, name: str, args: list[str], timeout: float, wait: bool = True) -> tuple[str, str]:
        cmd = ["ray", "job", "submit", "--address", DASHBOARD, "--working-dir", ".", "--submission-id",
               f"{name}-{secrets.token_hex(3)}"]
        if not wait:
            cmd.append("--no-wait")
        proc = self.user([*cmd, "--", *args], timeout=timeout)
        sid = cmd[cmd.index("--submission-id") + 1]
        (self.out / f"{name}.log").write_text(proc.stdout + proc.stderr)
        return sid, proc.stdout + proc.stderr

    def _common(self, name: str) -> list[str]:
        home = self.m.home
        return ["--name", name, "--store", f"{home}/runs/{name}/snapshots", "--set", "run.ray_address=auto",
                "--set", f"run.runs_dir={home}/runs", "--set", "run.worker_resource=carla",
                "--set", "run.learner_resource=learner"]

    def train(self) -> Path:
        with self.t.step(f"job 1: fleet train, {self.workers} workers, {self.train_steps} env steps"):
            _, text = self._submit("train", ["fleet", "train", "--steps", str(self.train_steps), "--workers",
                                             str(self.workers), *self._common("check-train"),
                                             "--set", f"learner.learning_starts={self.train_steps // 2}"],
                                   timeout=600)
            if "succeeded" not in text:
                raise CheckFailed("the training job did not succeed: see train.log")
            run_dir = self.m.home / "runs" / "check-train"
            summary = json.loads((run_dir / "summary.json").read_text())
            names = {n["raylet"]["nodeId"]: n["raylet"].get("nodeName", "?") for n in alive_nodes(self.token())}
            p = summary["placement"]
            where = {"learner": names.get(p["learner"]), "replay": names.get(p["replay"]),
                     "workers": sorted(names.get(w, "?") for w in p["workers"])}
            self.t.results["train"] = {"env_steps": summary["env_steps"], "updates": summary["learner_updates"],
                                       "final_snapshot": summary["final_snapshot"], "placement": where,
                                       "placement_text": summary.get("placement_text")}
            for line in summary.get("placement_text", []):
                self.t.say(f"  {line}")
            self.t.say(f"learner on {where['learner']}, workers on {', '.join(where['workers'])}; "
                       f"{summary['env_steps']} env steps, {summary['learner_updates']} updates, "
                       f"final snapshot {summary['final_snapshot']}")
            if not summary["learner_updates"]:
                raise CheckFailed("the training job made no learner updates")
            if where["learner"] != f"node-{HEAD}" or where["replay"] != f"node-{HEAD}":
                raise CheckFailed(f"learner/replay not on the head: {where}")
            if not where["workers"] or any(w not in {f"node-{ip}" for ip in WORKERS} for w in where["workers"]):
                raise CheckFailed(f"rollout workers not all on the worker nodes: {where['workers']}")
            return run_dir

    def evaluate(self, run_dir: Path) -> None:
        with self.t.step("job 2: fleet evaluate on the snapshot job 1 wrote"):
            store = run_dir / "snapshots"
            _, text = self._submit("evaluate", ["fleet", "evaluate", "--snapshot", f"{store}@latest", "--workers",
                                                "2", "--episodes", "2", "--json", "--out",
                                                str(self.m.home / "runs" / "check-eval")], timeout=400)
            if "succeeded" not in text:
                raise CheckFailed("the evaluation job did not succeed: see evaluate.log")
            report = json.loads((self.m.home / "runs" / "check-eval" / "report.json").read_text())
            self.t.results["evaluate"] = {"snapshot": report.get("snapshot"), "episodes": len(report["episodes"]),
                                          "route_completion": report.get("mean_route_completion"),
                                          "driving_score": report.get("driving_score")}
            self.t.say(f"evaluated {report.get('snapshot')}: {len(report['episodes'])} episodes, route completion "
                       f"{report.get('mean_route_completion'):.2f}, driving score {report.get('driving_score'):.2f}")
            if len(report["episodes"]) != 2:
                raise CheckFailed(f"the evaluation ran {len(report['episodes'])} episodes, not 2")

    def stop_job(self) -> None:
        with self.t.step("job 3: fleet train, stopped with `ray job stop` once it has learned"):
            sid, _ = self._submit("stopped", ["fleet", "train", "--steps", "1000000", "--workers",
                                              str(self.workers), *self._common("check-stop"),
                                              "--set", "learner.learning_starts=300"], timeout=60, wait=False)
            deadline, logs = time.monotonic() + 300, ""
            while time.monotonic() < deadline:
                logs = self.user(["ray", "job", "logs", "--address", DASHBOARD, sid], check=False).stdout
                updates = [int(u.replace(",", "")) for u in re.findall(r"\| upd ([\d,]+) \|", logs)]
                if updates and updates[-1] >= 20:
                    break
                time.sleep(3)
            else:
                raise CheckFailed("the third job made no updates within 300 s")
            t0 = time.monotonic()
            self.user(["ray", "job", "stop", "--address", DASHBOARD, sid], timeout=180)
            stopped = time.monotonic() - t0
            status = self.user(["ray", "job", "status", "--address", DASHBOARD, sid], check=False).stdout
            logs = self.user(["ray", "job", "logs", "--address", DASHBOARD, sid], check=False).stdout
            (self.out / "stopped.log").write_text(logs)
            summary_path = self.m.home / "runs" / "check-stop" / "summary.json"
            summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
            self.t.results["stop"] = {"stop_to_end_s": round(stopped, 1), "interrupted": summary.get("interrupted"),
                                      "final_snapshot": summary.get("final_snapshot"),
                                      "env_steps": summary.get("env_steps"), "updates": summary.get("learner_updates")}
            self.t.say(f"`ray job stop` returned after {stopped:.1f} s; summary: interrupted="
                       f"{summary.get('interrupted')}, final snapshot {summary.get('final_snapshot')} at "
                       f"{summary.get('learner_updates')} updates")
            if not summary.get("interrupted") or not summary.get("final_snapshot"):
                tail = "\n".join(logs.strip().splitlines()[-15:])
                raise CheckFailed(f"the stopped job wrote no final snapshot; `ray job stop` took {stopped:.1f} s "
                                  f"(status: {status.strip()[-200:]}); the job's last log lines:\n{tail}")

    def down(self) -> None:
        with self.t.step("ray down -y"):
            self.user(["ray", "down", "-y", YAML], timeout=180)
            deadline = time.monotonic() + 60
            left = self.m.user_processes()
            while left and time.monotonic() < deadline:  # the SSH control socket lingers ControlPersist (10 s)
                time.sleep(1)
                left = self.m.user_processes()
            self.t.results["left_after_down"] = left
            self.t.say(f"processes of the cluster left after ray down: {len(left)}")
            if left:
                raise CheckFailed("ray down left processes running:\n  " + "\n  ".join(left))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cluster-check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/cluster-check", help="transcript, result.json and logs")
    p.add_argument("--steps", type=int, default=1000, help="env steps of the first training job")
    p.add_argument("--workers", type=int, default=4, help="rollout workers of the training jobs")
    args = p.parse_args(argv)
    out = Path(args.out).resolve() / time.strftime("%Y%m%d-%H%M%S")
    return Check(out, args.steps, args.workers).main()


if __name__ == "__main__":
    sys.exit(main())
