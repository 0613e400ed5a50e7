"""The dashboard's server without a browser: JSON API, /metrics, and the token."""
import asyncio

import numpy as np
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from detectors.pca import PCADetector
from producers.simulate import normal_history, simulate_entity
from scoring.codec import encode_readings
from scoring.pipeline import Message, Pipeline
from scoring.settings import Settings
from stream.board import Board
from stream.web import build_app, check_exposure

START = 1_700_000_000.0


def fed_board():
    live = simulate_entity("plant-01", 8, 1500, START, 3)
    hist = normal_history("plant-01", 8, 3000, START, 3)
    board = Board()
    pipe = Pipeline(Settings(), {"*": PCADetector(hist.channels).fit(hist.values)}, board=board)
    msgs = [Message(0, i, b"k", encode_readings(live.entity, live.ts[j:j + 50], live.values[j:j + 50], live.channels))
            for i, j in enumerate(range(0, 1500, 50))]
    msgs.append(Message(0, len(msgs), b"k", b"{not json"))
    for i in range(0, len(msgs), 7):
        asyncio.run(pipe.process(msgs[i:i + 7]))
        board.batch(7, {0: len(msgs) - i - 7})
    return board, live


def get(board, path, headers=None, token=None):
    """One request to a fresh app (an aiohttp app belongs to one event loop)."""
    async def run():
        async with TestClient(TestServer(build_app(board, token))) as client:
            resp = await client.get(path, headers=headers or {})
            return resp.status, await resp.read()
    return asyncio.run(run())


def test_api_lists_entities_points_incidents_and_a_heat_map_naming_the_channels():
    board, live = fed_board()
    status, body = get(board, "/api/entities")
    overview = orjson.loads(body)
    assert status == 200 and [e["entity"] for e in overview["entities"]] == ["plant-01"]
    assert overview["health"]["readings"] == 1500 and overview["health"]["dlq"] == {"malformed": 1}
    entity = orjson.loads(get(board, "/api/entity/plant-01")[1])
    assert entity["ts"] == live.ts.tolist() and len(entity["threshold"]) == 1500
    assert entity["incidents"], "the simulator injects anomalies: incidents are shown"
    first = entity["incidents"][0]
    heat = orjson.loads(get(board, f"/api/entity/plant-01/incident/{first['alert_id']}")[1])
    assert heat["names"] == live.channels and len(heat["channel_scores"]) == 8
    assert len(heat["channel_scores"][0]) == len(heat["ts"]) > 0
    # the raw readings of the ranked channels, over the same points: what the worker scored
    top = heat["top_channels"]
    assert [c["channel"] for c in top] == [c["channel"] for c in heat["channels"]] and top
    row = {t: i for i, t in enumerate(live.ts.tolist())}
    for c in top:
        col = live.channels.index(c["channel"])
        expected = [live.values[row[t], col] for t in heat["ts"]]
        assert np.allclose(c["values"], expected, rtol=1e-5) and len(c["scores"]) == len(heat["ts"])
    assert get(board, "/")[0] == 200 and get(board, "/static/uPlot.iife.min.js")[0] == 200


def test_metrics_expose_readings_dead_letters_models_and_lag():
    board, _ = fed_board()
    text = get(board, "/metrics")[1].decode()
    assert "vigil_readings_total 1500.0" in text
    assert 'vigil_dlq_total{reason="malformed"} 1.0' in text
    assert 'vigil_model_info{entity="plant-01",model="pca",version="1"} 1.0' in text
    assert 'vigil_consumer_lag{partition="0"}' in text and "vigil_readings_per_second" in text


def test_a_token_guards_every_request_and_other_interfaces_need_one():
    board, _ = fed_board()
    assert get(board, "/api/entities", token="s3cret")[0] == 401
    assert get(board, "/metrics", token="s3cret")[0] == 401
    assert get(board, "/api/entities?token=wrong", token="s3cret")[0] == 401
    assert get(board, "/api/entities?token=s3cret", token="s3cret")[0] == 200
    assert get(board, "/metrics", {"Authorization": "Bearer s3cret"}, token="s3cret")[0] == 200
    assert get(board, "/static/uPlot.iife.min.js", token="s3cret")[0] == 401
    assert get(board, "/static/uPlot.iife.min.js", {"Cookie": "vigil_token=s3cret"}, token="s3cret")[0] == 200
    check_exposure("127.0.0.1", None)
    with pytest.raises(ValueError, match="token"):
        check_exposure("0.0.0.0", None)
    check_exposure("0.0.0.0", "s3cret")
    assert np.isfinite(board.readings_per_second())


def test_the_page_opened_with_a_token_hands_it_to_its_own_scripts_as_a_cookie():
    board, _ = fed_board()

    async def run():
        async with TestClient(TestServer(build_app(board, "s3cret"))) as client:
            page = await client.get("/?token=s3cret")
            script = await client.get("/static/dashboard.js")  # the client keeps cookies, like a browser
            return page.status, page.cookies.get("vigil_token"), script.status
    status, cookie, script = asyncio.run(run())
    assert status == 200 and cookie is not None and cookie.value == "s3cret" and script == 200


def test_the_entity_page_lists_the_models_that_served_it():
    live = simulate_entity("plant-01", 8, 600, START, 3)
    hist = normal_history("plant-01", 8, 3000, START, 3)
    board = Board()
    first = PCADetector(hist.channels).fit(hist.values)
    pipe = Pipeline(Settings(), {"plant-01": first}, board=board)
    msg = lambda i, j: Message(0, i, b"k", encode_readings(live.entity, live.ts[j:j + 300], live.values[j:j + 300],  # noqa: E731
                                                           live.channels))
    asyncio.run(pipe.process([msg(0, 0)]))
    second = PCADetector(hist.channels, variance=0.9).fit(hist.values)
    second.info.version = "2"
    pipe.swap("plant-01", second)
    asyncio.run(pipe.process([msg(1, 300)]))
    models = orjson.loads(get(board, "/api/entity/plant-01")[1])["models"]
    assert models == [{"model": first.model_id, "since": live.ts[0]}, {"model": "pca@2", "since": live.ts[300]}]


def post(board, path, body, send, token=None, headers=None):
    async def run():
        async with TestClient(TestServer(build_app(board, token, send))) as client:
            resp = await client.post(path, data=body if isinstance(body, bytes) else orjson.dumps(body),
                                     headers=headers or {})
            return resp.status, orjson.loads(await resp.read())
    return asyncio.run(run())


def test_feedback_on_an_incident_takes_its_span_from_the_worker_and_is_sent():
    board, _ = fed_board()
    sent = []

    async def send(fb):
        sent.append(fb)
    inc = orjson.loads(get(board, "/api/entity/plant-01")[1])["incidents"][0]
    status, body = post(board, "/api/feedback", {"entity": "plant-01", "alert_id": inc["alert_id"],
                                                 "label": "false-alarm", "start": 0, "end": 1, "note": "valve test"},
                        send)
    assert status == 200 and body["ok"]
    assert [(f.entity, f.alert_id, f.label, f.start, f.end, f.note, f.source) for f in sent] == [
        ("plant-01", inc["alert_id"], "false-alarm", inc["start"], inc["end"], "valve test", "dashboard")]
    shown = orjson.loads(get(board, "/api/entity/plant-01")[1])["incidents"][0]
    assert shown["label"] == "false-alarm"
    # a missed period: the operator's span; only "anomaly" makes sense without an alert
    status, body = post(board, "/api/feedback", {"entity": "plant-01", "label": "anomaly", "start": START + 10,
                                                 "end": START + 20}, send)
    assert status == 200 and (sent[-1].start, sent[-1].end, sent[-1].alert_id) == (START + 10, START + 20, None)
    for bad, code in (({"entity": "plant-01", "label": "false-alarm", "start": 1, "end": 2}, 400),
                      ({"entity": "plant-01", "label": "maybe", "alert_id": inc["alert_id"]}, 400),
                      ({"entity": "plant-01", "label": "anomaly", "start": 5, "end": 1}, 400),
                      ({"entity": "plant-01", "label": "anomaly", "alert_id": "nope"}, 404),
                      (b"{not json", 400), ([1, 2], 400)):
        status, body = post(board, "/api/feedback", bad, send)
        assert status == code and "error" in body, (bad, status, body)
    assert len(sent) == 2, "nothing invalid was sent"


def test_feedback_needs_the_token_and_a_sender():
    board, _ = fed_board()

    async def send(fb):
        raise AssertionError("must not be called")
    body = {"entity": "plant-01", "label": "anomaly", "start": 1, "end": 2}
    assert post(board, "/api/feedback", body, send, token="s3cret")[0] == 401
    assert post(board, "/api/feedback", body, None)[0] == 503

    async def down(fb):
        raise ConnectionError("no broker")
    status, answer = post(board, "/api/feedback", body, down)
    assert status == 503 and "no broker" in answer["error"]
