"""The worker's dashboard in headless Chromium, and /metrics, during a simulated run on a real broker."""
import shutil
import urllib.request
from pathlib import Path

import orjson
import pytest

from producers.simulate import simulate_plant
from scoring.codec import encode_readings
from stream.broker import free_port

from .support import WORKER_FAST, read_topic, send, train_models, wait_until

pytestmark = pytest.mark.integration

ENTITIES, CHANNELS, POINTS, SEED, START = 2, 6, 1500, 7, 1_700_000_000.0
DOCS = Path(__file__).resolve().parents[2] / "docs"


def fetch(url):
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def metric(text, name):
    """The sum of a metric's samples in Prometheus text format."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def run_plant(broker, procs, tmp_path):
    plant = simulate_plant(ENTITIES, CHANNELS, POINTS, START, SEED)
    models = train_models([s.entity for s in plant], CHANNELS, START, SEED, tmp_path / "models")
    port = free_port("127.0.0.1")
    procs.vigil("worker", "--broker", broker, *models, *WORKER_FAST, "--web-port", str(port), name="worker")
    wait_until(lambda: "dashboard on" in procs.log("worker"), 60, 0.5, lambda: procs.log("worker")[-2000:])
    return plant, f"http://127.0.0.1:{port}"


def test_metrics_move_when_readings_and_bad_messages_arrive(broker, procs, tmp_path):
    plant, url = run_plant(broker, procs, tmp_path)
    before = fetch(url + "/metrics")
    s = plant[0]
    send(broker, [(s.entity.encode(), encode_readings(s.entity, s.ts[i:i + 50], s.values[i:i + 50], s.channels))
                  for i in range(0, 500, 50)] + [(b"x", b"{oops"), (b"x", b'{"entity": "x"}')])
    wait_until(lambda: metric(fetch(url + "/metrics"), "vigil_readings_total") >= 500, 60, 0.5)
    after = fetch(url + "/metrics")
    assert metric(before, "vigil_readings_total") == 0 and metric(after, "vigil_readings_total") == 500
    assert metric(after, "vigil_readings_per_second") > 0
    assert metric(before, "vigil_dlq_total") == 0 and metric(after, "vigil_dlq_total") == 2
    assert 'vigil_dlq_total{reason="malformed"} 1.0' in after and 'reason="missing_field"' in after


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
def test_dashboard_draws_scores_an_alert_span_and_names_the_injected_channel(broker, procs, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    plant, url = run_plant(broker, procs, tmp_path)
    send(broker, [(s.entity.encode(), encode_readings(s.entity, s.ts[i:i + 50], s.values[i:i + 50], s.channels))
                  for s in plant for i in range(0, POINTS, 50)])
    truth = [a.to_json() for s in plant for a in s.anomalies]

    def localised_incident():
        """An opened incident overlapping an injected anomaly whose top channels name one of its channels."""
        latest = {}
        for a in read_topic(broker, "vigil.alerts", 4):
            latest[a["alert_id"]] = a
        for a in latest.values():
            for t in truth:
                top = {c["channel"] for c in a["channels"][:3]}
                if (a["entity"] == t["entity"] and a["start"] <= t["end"] + 15 and a["end"] >= t["start"] - 2
                        and top & set(t["channels"])):
                    return a, t
        return None

    wait_until(lambda: localised_incident() is not None, 120, 1, lambda: procs.log("worker")[-2000:])
    alert, injected = localised_incident()

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1500"):
        options.add_argument(arg)
    options.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
        driver.get(f"{url}/?entity={alert['entity']}&alert={alert['alert_id']}")

        def drawn():
            chart = driver.find_element(By.ID, "chart")
            ranked = driver.find_element(By.ID, "ranked").text
            raw = driver.find_element(By.ID, "rawchart")
            return (int(chart.get_attribute("data-points")) > 0 and int(chart.get_attribute("data-spans")) >= 1
                    and any(ch in ranked for ch in injected["channels"])
                    and int(raw.get_attribute("data-points")) > 0 and raw.get_attribute("data-series"))
        wait_until(drawn, 30, 0.5, lambda: driver.find_element(By.TAG_NAME, "body").text[:2000])
        assert driver.find_elements(By.CSS_SELECTOR, "#chart canvas"), "uPlot drew the score plot"
        shown = driver.find_element(By.ID, "rawchart").get_attribute("data-series").split(",")
        assert driver.find_elements(By.CSS_SELECTOR, "#rawchart canvas"), "the raw readings are drawn"
        ranked = [li.text.split()[0] for li in driver.find_elements(By.CSS_SELECTOR, "#ranked li")]
        assert shown == ranked and set(shown) & set(injected["channels"]), "the ranked channels' raw readings"
        heat = driver.find_element(By.ID, "heatmap")
        assert int(heat.get_attribute("height")) == 14 * CHANNELS
        assert set(injected["channels"]) <= set(heat.get_attribute("data-channels").split(","))
        rows = driver.find_elements(By.CSS_SELECTOR, "tr[data-entity]")
        assert {r.get_attribute("data-entity") for r in rows} == {s.entity for s in plant}
        # the operator confirms the incident as an anomaly with the button: a label on vigil.feedback
        driver.find_element(By.ID, "note").send_keys("confirmed on site")
        driver.find_element(By.ID, "mark-anomaly").click()
        wait_until(lambda: driver.find_element(By.ID, "label-status").get_attribute("data-result"), 20, 0.5)
        assert driver.find_element(By.ID, "label-status").get_attribute("data-result") == "ok", \
            driver.find_element(By.ID, "label-status").text
        labels = read_topic(broker, "vigil.feedback", 1)
        assert [(x["entity"], x["alert_id"], x["label"], x["note"], x["source"]) for x in labels] == [
            (alert["entity"], alert["alert_id"], "anomaly", "confirmed on site", "dashboard")]
        wait_until(lambda: "labelled anomaly" in driver.find_element(By.ID, "incidents").text, 10, 0.5)
        DOCS.mkdir(exist_ok=True)
        driver.save_screenshot(str(DOCS / "dashboard.png"))
        print(f"\nincident {alert['alert_id']} on {alert['entity']}: ranked "
              f"{[c['channel'] for c in alert['channels']]}, injected {injected['kind']} on {injected['channels']}")
    finally:
        driver.quit()
    assert orjson.loads(fetch(f"{url}/api/entities"))["health"]["readings"] == ENTITIES * POINTS
