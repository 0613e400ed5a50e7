"""`vigil demo` end to end: alerts for injected anomalies appear, and it leaves no process behind."""
import subprocess
import sys
from pathlib import Path

import pytest

from stream.broker import free_port, port_is_free

pytestmark = pytest.mark.integration


def test_demo_prints_localised_alerts_and_cleans_up(tmp_path):
    port, web = free_port(), free_port()
    workdir = tmp_path / "demo"
    out = subprocess.run([sys.executable, "-m", "cli", "demo", "--duration", "45", "--rate", "40",
                          "--port", str(port), "--web-port", str(web), "--workdir", str(workdir)],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "embedded broker on" in out.stdout and "vigil alerts --follow" in out.stdout
    assert f"dashboard: http://127.0.0.1:{web}/" in out.stdout
    opens = out.stdout.count("\nOPEN ")
    hits = out.stdout.count("(channel hit)")
    assert opens >= 2, out.stdout[-3000:]
    assert hits >= opens // 2, out.stdout[-3000:]
    assert port_is_free("127.0.0.1", port), "the broker is gone"
    assert port_is_free("127.0.0.1", web), "the worker and its dashboard are gone"
    assert not processes_mentioning(str(workdir)), "no worker or simulator left running"


def processes_mentioning(text):
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                found.append(cmdline.parent.name)
        except OSError:
            continue
    return found
