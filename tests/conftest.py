import os
import signal
import subprocess
import sys

import pytest

from stream.broker import start_broker


@pytest.fixture
def broker(tmp_path):
    """A fresh in-memory Kafka-compatible broker (tansu) on a free loopback port, per test."""
    proc, address = start_broker("127.0.0.1", log=open(tmp_path / "broker.log", "wb"))
    yield address
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class Procs:
    """Child processes started by a test; all are killed at teardown."""

    def __init__(self, tmp_path):
        self.tmp_path, self.procs = tmp_path, []

    def vigil(self, *args, name="proc", env=None):
        log = open(self.tmp_path / f"{name}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "cli", *args], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, start_new_session=True)
        self.procs.append(proc)
        return proc

    def log(self, name):
        return (self.tmp_path / f"{name}.log").read_text(errors="replace")

    def kill_all(self):
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


@pytest.fixture
def procs(tmp_path):
    p = Procs(tmp_path)
    yield p
    p.kill_all()
