"""Starlette vs FastAPI: what each costs per request on a trivial JSON POST route, in process.

    .venv/bin/python -m bench.asgi_overhead [--requests 4000] [--rounds 5]

FastAPI is not a dependency of ortserve; install it for this measurement only
(``.venv/bin/pip install fastapi``, or ``pip install --target DIR fastapi`` and PYTHONPATH=DIR).
Without it, only the bare-ASGI and Starlette figures are printed.

The same route in each app: POST /predict with ``{"text": "..."}`` answering
``{"label": ..., "score": ...}`` (the seeds' router endpoint). Apps:

- ``asgi``: a hand-written ASGI callable (read the body, json.loads, json.dumps): the floor;
- ``starlette``: a Starlette ``Route`` reading ``await request.json()``, answering JSONResponse;
- ``fastapi-request``: FastAPI, the endpoint taking the raw ``Request`` (no validation);
- ``fastapi-pydantic``: FastAPI as usually written: a pydantic model for the body and one as
  ``response_model`` (validation and serialization both ways).

Two drivers, each in one process and one event loop, no sockets:

- ``direct``: the app called as ASGI with a prepared scope, receive and send, ``--requests``
  times back to back: per-request CPU of the framework alone (µs);
- ``httpx``: an ``httpx.AsyncClient`` over ``httpx.ASGITransport``: the same plus httpx's own
  client cost (equal for every app), closer to what a request costs end to end.

Apps are interleaved in every round (order rotated) and each figure is the median over rounds;
the run is bounded in count (``--requests`` x ``--rounds``) and in time (``--budget`` s).
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations at
# runtime, and the pydantic models are local to fastapi_apps(), where string annotations would
# not resolve (FastAPI would take the body model for a query parameter and answer 422).
import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

BODY = json.dumps({"text": "route this sentence to the right model, please"}).encode()
ANSWER = {"label": "billing", "score": 0.93}


async def bare_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The floor: ASGI with nothing between the server and the handler."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    json.loads(body)
    payload = json.dumps(ANSWER).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def starlette_app() -> App:
    async def predict(request: Request) -> JSONResponse:
        await request.json()
        return JSONResponse(ANSWER)

    return Starlette(routes=[Route("/predict", predict, methods=["POST"])])


def fastapi_apps() -> dict[str, App]:
    """FastAPI's two usual shapes, or nothing when FastAPI is not installed."""
    try:
        from fastapi import FastAPI
        from pydantic import BaseModel
    except ImportError:
        return {}

    class Query(BaseModel):
        text: str

    class Answer(BaseModel):
        label: str
        score: float

    raw = FastAPI()

    @raw.post("/predict")
    async def predict_raw(request: Request) -> JSONResponse:
        await request.json()
        return JSONResponse(ANSWER)

    typed = FastAPI()

    @typed.post("/predict", response_model=Answer)
    async def predict_typed(query: Query) -> Answer:
        return Answer(label="billing", score=0.93)  # ANSWER, as the model

    return {"fastapi-request": raw, "fastapi-pydantic": typed}


def scope() -> Scope:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/predict", "raw_path": b"/predict", "root_path": "",
        "query_string": b"", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000),
        "headers": [
            (b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(BODY)),
        ],
    }  # fmt: skip


async def direct(app: App, requests: int) -> float:
    """Per-request µs calling the app as an ASGI server would; checks every answer."""
    status: list[int] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    start = time.perf_counter()
    for _ in range(requests):
        await app(scope(), receive, send)
    elapsed = time.perf_counter() - start
    if status.count(200) != requests:
        raise RuntimeError(f"{requests - status.count(200)} non-200 answers")
    return elapsed / requests * 1e6


async def over_httpx(app: App, requests: int) -> float:
    """Per-request µs through httpx.AsyncClient and httpx.ASGITransport."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
        start = time.perf_counter()
        for _ in range(requests):
            response = await client.post(
                "/predict", content=BODY, headers={"content-type": "application/json"}
            )
            if response.status_code != 200:
                raise RuntimeError(f"{response.status_code}: {response.text}")
        return (time.perf_counter() - start) / requests * 1e6


DRIVERS: dict[str, Callable[[App, int], Awaitable[float]]] = {
    "direct": direct,
    "httpx": over_httpx,
}


async def measure(
    apps: dict[str, App], requests: int, rounds: int, budget: float
) -> dict[str, dict[str, list[float]]]:
    """driver -> app -> per-request µs per round; warm-up first, stops early past ``budget``."""
    names = list(apps)
    figures: dict[str, dict[str, list[float]]] = {d: {n: [] for n in names} for d in DRIVERS}
    deadline = time.monotonic() + budget
    for name in names:  # warm-up: imports, route compilation, first-call caches
        for run in DRIVERS.values():
            await run(apps[name], min(200, requests))
    for number in range(rounds):
        order = names[number % len(names) :] + names[: number % len(names)]
        for driver, run in DRIVERS.items():
            for name in order:
                figures[driver][name].append(await run(apps[name], requests))
        if time.monotonic() > deadline:
            print(f"budget of {budget:.0f} s spent after {number + 1} rounds", flush=True)
            break
    return figures


def table(figures: dict[str, dict[str, list[float]]]) -> list[str]:
    lines = [
        "| app | direct ASGI µs/request (median; min-max) | over httpx µs/request | "
        "direct - starlette µs |",
        "|---|---|---|---|",
    ]
    base = statistics.median(figures["direct"]["starlette"])
    for name, runs in figures["direct"].items():
        via = figures["httpx"][name]
        lines.append(
            f"| {name} | {statistics.median(runs):.1f} ({min(runs):.1f}-{max(runs):.1f}) "
            f"| {statistics.median(via):.1f} | {statistics.median(runs) - base:+.1f} |"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000, help="per app, driver and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=120.0, help="seconds, at most")
    args = parser.parse_args(argv)
    apps: dict[str, App] = {"asgi": bare_app, "starlette": starlette_app(), **fastapi_apps()}
    if "fastapi-request" not in apps:
        print("fastapi is not installed: measuring bare ASGI and Starlette only", flush=True)
    import starlette

    versions = f"starlette {starlette.__version__}, httpx {httpx.__version__}"
    if "fastapi-request" in apps:
        import fastapi
        import pydantic

        versions += f", fastapi {fastapi.__version__}, pydantic {pydantic.VERSION}"
    print(f"{versions}; {args.requests} requests x {args.rounds} rounds", flush=True)
    figures = asyncio.run(measure(apps, args.requests, args.rounds, args.budget))
    print("\n".join(table(figures)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
