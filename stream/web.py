"""The worker's web server: the live dashboard, its JSON API and Prometheus ``/metrics``.

One small aiohttp app (aiohttp comes with Faust) on the worker's event loop. Faust's own web server
stays off: it also serves debugging pages we could not put behind the token. Bound to 127.0.0.1 by
default; on any other address a token is required (``--web-token`` or ``VIGIL_WEB_TOKEN``) and every
request must carry it (``Authorization: Bearer TOKEN``, ``?token=TOKEN``, or the cookie that a request
with ``?token=`` sets, so that the page's own scripts load).
"""
from __future__ import annotations

import hmac
import ipaddress
from pathlib import Path

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from scoring.feedback import make

from .board import Board

STATIC = Path(__file__).with_name("static")
COOKIE = "vigil_token"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without a token."""
    if not is_loopback(host) and not token:
        raise ValueError(f"the dashboard on {host} would be reachable from other machines: "
                         f"set --web-token (or VIGIL_WEB_TOKEN), or bind 127.0.0.1")


def build_app(board: Board, token: str | None = None, send=None) -> web.Application:
    """``send``: ``await send(feedback)`` publishes an operator's label; None: labelling is off."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(board)

    @web.middleware
    async def auth(request: web.Request, handler):
        if not token:
            return await handler(request)
        given = (request.query.get("token") or request.headers.get("Authorization", "").removeprefix("Bearer ")
                 or request.cookies.get(COOKIE, ""))
        if not hmac.compare_digest(given.encode(), token.encode()):
            return web.json_response({"error": "a valid token is required"}, status=401)
        response = await handler(request)
        if "token" in request.query:  # the page's scripts and styles then carry it as a cookie
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
        return response

    def json(data) -> web.Response:
        return web.Response(body=orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY),
                            content_type="application/json")

    async def index(request):
        return web.FileResponse(STATIC / "index.html")

    async def entities(request):
        return json({"entities": board.entity_list(), "health": board.health()})

    async def entity(request):
        found = board.entity(request.match_info["name"])
        return json(found) if found is not None else json({"error": "unknown entity"})

    async def incident(request):
        found = board.incident(request.match_info["name"], request.match_info["alert_id"])
        return json(found) if found is not None else json({"error": "unknown incident"})

    async def label(request):
        """Operator feedback (``scoring.feedback``): ``{"entity", "label", "alert_id", "note"}`` for an
        incident this worker shows (its span is taken from the worker), or ``{"entity", "label":
        "anomaly", "start", "end", "note"}`` for a missed period; published on the feedback topic."""
        if send is None:
            return web.json_response({"error": "feedback is not enabled on this worker"}, status=503)
        try:
            body = orjson.loads(await request.read())
            entity, kind = body["entity"], body["label"]
            alert_id = body.get("alert_id")
            if alert_id is not None:
                found = board.incident(entity, alert_id, pad=0)
                if found is None:
                    return web.json_response({"error": f"no incident {alert_id} of {entity} here"}, status=404)
                start, end = found["start"], found["end"]
            elif kind != "anomaly":
                raise ValueError("a period without an alert can only be labelled anomaly")
            else:
                start, end = body["start"], body["end"]
            fb = make(entity, kind, start, end, alert_id=alert_id, note=body.get("note", ""), source="dashboard")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            return web.json_response({"error": f"not a valid label: {exc}"}, status=400)
        try:
            await send(fb)
        except Exception as exc:  # noqa: BLE001 - the broker is unreachable: say so, keep serving
            return web.json_response({"error": f"the label could not be published: {exc}"}, status=503)
        if alert_id is not None:
            board.labelled(alert_id, kind)
        return json({"ok": True, "feedback_id": fb.feedback_id, "entity": fb.entity, "label": fb.label,
                     "start": fb.start, "end": fb.end})

    async def metrics(request):
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(middlewares=[auth])
    app.router.add_get("/", index)
    app.router.add_get("/api/entities", entities)
    app.router.add_get("/api/entity/{name}", entity)
    app.router.add_get("/api/entity/{name}/incident/{alert_id}", incident)
    app.router.add_post("/api/feedback", label)
    app.router.add_get("/metrics", metrics)
    app.router.add_static("/static/", STATIC)
    return app


async def serve(board: Board, host: str, port: int, token: str | None = None, send=None) -> web.AppRunner:
    check_exposure(host, token)
    runner = web.AppRunner(build_app(board, token, send), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
