"""A throwaway PostgreSQL server for tests and benchmarks: initdb in a temporary folder, loopback only.

Uses the server binaries of the machine (Debian's `postgresql` package: /usr/lib/postgresql/<n>/bin,
or whatever `pg_config --bindir` names). PostgreSQL refuses to run as root, so as root the cluster is
made and run as the `postgres` user that the package creates. `find_binaries()` returns None when
no server is installed; callers skip with that reason.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

NOT_INSTALLED = ("PostgreSQL server binaries not found (install Debian's `postgresql` package, as .ci/run does,"
                 " or set NOTIFIER_PG_BINDIR)")


def find_binaries() -> Path | None:
    """The folder holding initdb and postgres, or None."""
    candidates: list[str] = []
    if os.environ.get("NOTIFIER_PG_BINDIR"):
        candidates.append(os.environ["NOTIFIER_PG_BINDIR"])
    if shutil.which("pg_config"):
        try:
            candidates.append(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                                             check=True).stdout.strip())
        except (OSError, subprocess.CalledProcessError):
            pass
    candidates.extend(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True))
    for c in candidates:
        if c and os.access(os.path.join(c, "initdb"), os.X_OK) and os.access(os.path.join(c, "postgres"), os.X_OK):
            return Path(c)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    """`start()` makes a new cluster and runs it on 127.0.0.1:<free port>; `stop()` removes it all."""

    durable: bool = False  # False: fsync off (tests); True: the server's defaults (benchmarks)
    port: int = 0
    bindir: Path | None = None
    _dir: Path | None = field(default=None, repr=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _serial: int = field(default=0, repr=False)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://notifier@127.0.0.1:{self.port}/{database}"

    def _run_as(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        return ["runuser", "-u", "postgres", "--"]

    def start(self, timeout: float = 30.0) -> PostgresServer:
        self.bindir = self.bindir or find_binaries()
        if self.bindir is None:
            raise RuntimeError(NOT_INSTALLED)
        self._dir = Path(tempfile.mkdtemp(prefix="notifier-pg-"))
        data = self._dir / "data"
        if os.geteuid() == 0:
            shutil.chown(self._dir, "postgres", "postgres")
        subprocess.run([*self._run_as(), str(self.bindir / "initdb"), "-D", str(data), "-U", "notifier",
                        "-A", "trust", "-E", "UTF8", "--no-locale"], check=True, capture_output=True)
        self.port = self.port or _free_port()
        options = ["-c", "listen_addresses=127.0.0.1", "-c", f"port={self.port}",
                   "-c", f"unix_socket_directories={self._dir}", "-c", "max_connections=200"]
        if not self.durable:
            options += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        self._proc = subprocess.Popen([*self._run_as(), str(self.bindir / "postgres"), "-D", str(data), *options],
                                      stdout=subprocess.DEVNULL, stderr=open(self._dir / "server.log", "wb"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError("PostgreSQL did not start: " + (self._dir / "server.log").read_text()[-2000:])
            ready = subprocess.run([str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port),
                                    "-U", "notifier", "-d", "postgres"], capture_output=True)
            if ready.returncode == 0:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("PostgreSQL did not become ready in time")

    def new_database(self) -> str:
        """A new empty database on this server; returns its URL."""
        self._serial += 1
        name = f"t{os.getpid()}_{self._serial}"
        assert self.bindir is not None
        subprocess.run([str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "notifier",
                        name], check=True, capture_output=True)
        return self.url(name)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            assert self.bindir is not None and self._dir is not None
            subprocess.run([*self._run_as(), str(self.bindir / "pg_ctl"), "-D", str(self._dir / "data"), "stop",
                            "-m", "immediate"], capture_output=True)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
