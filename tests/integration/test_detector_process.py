"""Scoring in a separate `vigil detector` process: same scores as in process; a dead one is waited for."""
import os
import signal
import socket
import threading
import time

import numpy as np
import pytest

from detectors import artefacts
from detectors.base import sliding_windows
from scoring.settings import Settings
from stream.broker import free_port
from stream.detector_service import RemoteDetector
from stream.evaluation import stream_through_kafka
from training.evaluate import stream_offline

from ..helpers import TINY, small_dataset
from ..unit.test_detectors import correlated

pytestmark = pytest.mark.integration


def start_detector(procs, port, name="detector"):
    proc = procs.vigil("detector", "--port", str(port), "--device", "cpu", name=name)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.2)
    raise AssertionError(procs.log(name)[-2000:])


def test_remote_scores_equal_local_ones_and_a_dead_detector_is_waited_for(procs, tmp_path):
    data = small_dataset()
    port = free_port()
    start_detector(procs, port)
    for name in ("pca", "amad"):  # a point-wise model and a windowed deep one with a divergence signal
        det = artefacts.create(name, data.channels, **(TINY if name == "amad" else {})).fit(data.train, progress=False)
        path = artefacts.save(det, tmp_path / name)
        local = artefacts.load(path)
        remote = RemoteDetector(artefacts.load(path), path, f"127.0.0.1:{port}", retry_wait=0.2)
        w = sliding_windows(correlated(300, seed=5), int(local.info.config.get("window", 32)), 8)
        a, b = local.score(w), remote.score(w)
        np.testing.assert_allclose(a.channel, b.channel, rtol=1e-5, atol=1e-6)
        assert (a.divergence is None) == (b.divergence is None)
        # the worker's pipeline gives the same stream through either
        settings = Settings(score_channels=True, device="cpu")
        s_local, s_remote = stream_offline(local, data, settings), stream_offline(remote, data, settings)
        np.testing.assert_allclose(s_local.score, s_remote.score, rtol=1e-5, atol=1e-6)
        assert [i["start"] for i in s_local.incidents] == [i["start"] for i in s_remote.incidents]

    # the detector process dies: a call waits and retries, and completes once one is back
    os.killpg(procs.procs[0].pid, signal.SIGKILL)
    procs.procs[0].wait()
    result = {}
    caller = threading.Thread(target=lambda: result.update(s=remote.score(w)))
    caller.start()
    time.sleep(1.5)
    assert caller.is_alive() and "s" not in result, "no scores, and no silent skip, while the detector is down"
    start_detector(procs, port, name="detector2")
    caller.join(timeout=60)
    assert "s" in result and result["s"].channel.shape == w.shape


def test_a_worker_scoring_in_a_detector_process_streams_the_in_process_scores(broker, procs, tmp_path):
    data = small_dataset()
    port = free_port()
    start_detector(procs, port)
    jobs, offline = {}, {}
    for name in ("pca", "amad"):
        det = artefacts.create(name, data.channels, **(TINY if name == "amad" else {})).fit(data.train, progress=False)
        jobs[name] = (artefacts.save(det, tmp_path / name), data)
        offline[name] = stream_offline(artefacts.load(jobs[name][0]), data, Settings(score_channels=True, device="cpu"))
    streamed = stream_through_kafka(jobs, Settings(score_channels=True, device="cpu", detector=f"127.0.0.1:{port}"),
                                    broker, timeout=300)
    for name in jobs:
        np.testing.assert_allclose(streamed[name].score, offline[name].score, rtol=1e-4, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(streamed[name].channel, offline[name].channel, rtol=1e-4, atol=1e-5)
    assert "loaded amad@1" in procs.log("detector"), "the detector process did the scoring"
