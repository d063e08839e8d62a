"""A `serve` subprocess on the loopback with ephemeral ports, for the load benchmark and the tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LISTENING = re.compile(r"on\s+http://127\.0\.0\.1:(\d+)\s+and\s+grpc\s+127\.0\.0\.1:(\d+)")


class ServerProcess:
    """`with ServerProcess(DIR, "--max-batch-size", "1") as s:` — s.http and s.grpc are "127.0.0.1:PORT".

    Its output goes to a file (a pipe nobody reads would block the server once full); leaving the block sends
    SIGTERM and, if it has not exited after 15 s, SIGKILL.
    """

    def __init__(self, directory: str | Path, *options: str, cwd: str | Path | None = None, startup_s: float = 120):
        self.args = [sys.executable, "-m", "perceiver_export", "serve", str(directory), "--host", "127.0.0.1",
                     "--http-port", "0", "--grpc-port", "0", *options]
        self.cwd = cwd
        self.startup_s = startup_s
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.NamedTemporaryFile("w+", prefix="perceiver-serve-", suffix=".log", delete=False)
        self.http = self.grpc = ""

    def __enter__(self) -> "ServerProcess":
        self.proc = subprocess.Popen(self.args, cwd=self.cwd, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + self.startup_s
        while time.monotonic() < deadline:
            m = LISTENING.search(self.output())
            if m:
                self.http, self.grpc = f"127.0.0.1:{m.group(1)}", f"127.0.0.1:{m.group(2)}"
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"serve did not start (exit {self.proc.returncode}):\n{self.output()}")

    def __exit__(self, *exc) -> None:
        self.stop()
        Path(self.log.name).unlink(missing_ok=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def rss_mb(self) -> float:
        """The server's resident memory now (Linux)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for process {self.pid}")

    def stop(self) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return None if self.proc is None else self.proc.returncode
