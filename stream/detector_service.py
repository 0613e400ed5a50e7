"""Scoring in a separate process: ``vigil detector`` serves models, workers hand it their windows.

Why: the stream work (decode, windows, thresholds, Kafka) is CPU-bound Python, scoring is GPU-bound
torch; in separate processes each scales on its own (one detector process per GPU, as many workers as
partitions allow). The hand-off is a TCP connection per worker thread carrying length-prefixed frames
of raw float32 arrays: one round trip per detector call, no JSON of numbers and no broker hop; a
micro-batch's windows are already one array.

Frame: 4-byte big-endian header length, a JSON header, then the arrays' bytes in header order.
Request header ``{"path": artefact directory, "shape": [B, W, C]}``; reply ``{"ok": true, "parts":
[[name, shape], ...]}`` or ``{"ok": false, "error": "..."}``. The detector process loads each
artefact once (by path, on storage it shares with the workers).

A worker whose detector process is slow or gone does not drop points: ``RemoteDetector.score``
logs the error and retries the same windows until it gets scores, so the micro-batch waits, Kafka
offsets are not released, and the lag (dashboard, ``vigil_consumer_lag``) shows the stall.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import orjson

from detectors.base import Detector, Scores

log = logging.getLogger("vigil.detector")
PARTS = ("reconstruction", "channel", "divergence")


def _pack(header: dict, arrays: list[np.ndarray]) -> bytes:
    head = orjson.dumps(header)
    return struct.pack(">I", len(head)) + head + b"".join(np.ascontiguousarray(a, np.float32).tobytes() for a in arrays)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionError("the detector process closed the connection")
        buf += chunk
    return bytes(buf)


# ---- the detector process ------------------------------------------------------------------------
class DetectorServer:
    def __init__(self, device: str = "auto"):
        self.device = device
        self.models: dict[str, Detector] = {}
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="score")  # one model call at a time per device
        self.calls = 0

    def _score(self, path: str, windows: np.ndarray) -> Scores:
        det = self.models.get(path)
        if det is None:
            from detectors import artefacts

            det = self.models[path] = artefacts.load(path).to(self.device)
            log.warning("loaded %s from %s on %s", det.model_id, path, det.device)
        return det.score(windows)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                (n,) = struct.unpack(">I", await reader.readexactly(4))
                header = orjson.loads(await reader.readexactly(n))
                shape = tuple(header["shape"])
                data = await reader.readexactly(int(np.prod(shape)) * 4)
                windows = np.frombuffer(data, np.float32).reshape(shape)
                try:
                    s = await loop.run_in_executor(self.executor, self._score, header["path"], windows)
                    arrays = [(name, getattr(s, name)) for name in PARTS if getattr(s, name) is not None]
                    reply = _pack({"ok": True, "parts": [[k, list(a.shape)] for k, a in arrays]},
                                  [a for _, a in arrays])
                except Exception as exc:  # noqa: BLE001 - the worker gets the reason, the server goes on
                    log.exception("scoring failed")
                    reply = _pack({"ok": False, "error": f"{type(exc).__name__}: {exc}"}, [])
                self.calls += 1
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def serve(host: str, port: int, device: str = "auto") -> None:
    server = DetectorServer(device)
    srv = await asyncio.start_server(server.handle, host, port)
    log.warning("detector process listening on %s:%d (device %s)", host, port, device)
    async with srv:
        await srv.serve_forever()


# ---- the worker's side ---------------------------------------------------------------------------
class RemoteDetector:
    """A loaded detector whose ``score`` runs in a detector process; everything else is local."""

    def __init__(self, detector: Detector, path: str, address: str, timeout: float = 60.0, retry_wait: float = 1.0):
        self._inner, self.path, self.address = detector, str(path), address
        self.timeout, self.retry_wait = timeout, retry_wait
        self._local = threading.local()  # one connection per calling thread

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def _connect(self) -> socket.socket:
        host, _, port = self.address.rpartition(":")
        sock = socket.create_connection((host or "127.0.0.1", int(port)), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _call(self, windows: np.ndarray) -> Scores:
        sock = getattr(self._local, "sock", None)
        if sock is None:
            sock = self._local.sock = self._connect()
        try:
            sock.sendall(_pack({"path": self.path, "shape": list(windows.shape)}, [windows]))
            (n,) = struct.unpack(">I", _recv_exact(sock, 4))
            header = orjson.loads(_recv_exact(sock, n))
            if not header["ok"]:
                raise RuntimeError(header["error"])
            parts = {}
            for name, shape in header["parts"]:
                parts[name] = np.frombuffer(_recv_exact(sock, int(np.prod(shape)) * 4), np.float32).reshape(shape)
            return Scores(parts["reconstruction"], parts["channel"], parts.get("divergence"))
        except BaseException:
            self._local.sock = None
            sock.close()
            raise

    def score(self, windows: np.ndarray) -> Scores:
        """Scores from the detector process; on failure, log and retry the same windows until it answers."""
        windows = np.ascontiguousarray(windows, np.float32)
        attempt = 0
        while True:
            try:
                return self._call(windows)
            except (OSError, ConnectionError, RuntimeError, struct.error) as exc:
                attempt += 1
                log.error("detector process %s failed on %s (attempt %d): %s; retrying in %.0fs",
                          self.address, self._inner.model_id, attempt, exc, self.retry_wait)
                time.sleep(self.retry_wait)
