"""REST plumbing shared by every route: bodies, JSON answers, auth, faults, rate-limit headers."""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, web

from tests.discord_emulator.models import ApiError, Auth, ErrorCode, Json, RecordedRequest
from tests.discord_emulator.world import Upload

API_PREFIX = "/api/v10"
UNKNOWN_ROUTE = f"{API_PREFIX}/{{tail}}"
# Routes authenticated by the interaction token in their URL, not by the bot token.
_TOKEN_ROUTES = ("/interactions/", "/webhooks/{app}/{token}")
_OPEN_ROUTES = {"GET /gateway"}
_FILE_FIELD = re.compile(r"files\[(\d+)\]")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON answer whose Content-Type is exactly application/json, as discord.py requires."""
    body = json.dumps(data).encode()
    return web.Response(body=body, status=status, headers={"Content-Type": "application/json"})


def no_content() -> web.Response:
    """204, as Discord answers deletes and un-awaited webhook executions."""
    return web.Response(status=204)


@dataclass(frozen=True, slots=True)
class Body:
    """A request body: the JSON payload (or multipart payload_json) and files by index."""

    json: Any
    files: dict[int, Upload]

    def object(self) -> Json:
        """The payload as a JSON object (400 when it is something else)."""
        if self.json is None:
            return {}
        if not isinstance(self.json, dict):
            raise ApiError(400, ErrorCode.INVALID_FORM_BODY, "Invalid Form Body")
        return self.json


BODY_KEY = web.RequestKey("body", Body)


async def read_body(request: web.Request) -> Body:
    """Parse JSON or multipart/form-data (`payload_json` plus `files[n]`)."""
    if request.content_type.startswith("multipart/"):
        return await _read_multipart(request)
    text = await request.text() if request.can_read_body else ""
    if not text:
        return Body(None, {})
    try:
        return Body(json.loads(text), {})
    except ValueError:
        raise ApiError(400, 50109, "The request body contains invalid JSON.") from None


async def _read_multipart(request: web.Request) -> Body:
    reader = await request.multipart()
    payload: Any = None
    files: dict[int, Upload] = {}
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue
        name = part.name or ""
        if name == "payload_json":
            payload = json.loads(await part.text())
        elif match := _FILE_FIELD.fullmatch(name):
            data = bytes(await part.read(decode=False))
            content_type = part.headers.get("Content-Type")
            files[int(match.group(1))] = Upload(part.filename or "file", data, content_type)
    return Body(payload, files)


def request_body(request: web.Request) -> Body:
    """The body the middleware already read."""
    return request[BODY_KEY]


@dataclass
class Fault:
    """An injected answer for matching requests: a 429 rate limit or an error status."""

    method: str
    pattern: re.Pattern[str]
    times: int
    status: int
    retry_after_s: float = 0.0
    global_: bool = False
    hits: int = 0

    @property
    def remaining(self) -> int:
        """How many more requests it will answer."""
        return self.times - self.hits

    def matches(self, method: str, path: str) -> bool:
        """Whether a request (path relative to /api/v10) gets this answer now."""
        wanted = self.method in ("*", method.upper())
        return self.remaining > 0 and wanted and self.pattern.fullmatch(path) is not None


@dataclass
class RestContext:
    """What the middleware needs: the bot token, faults, and where to record."""

    token: str
    faults: list[Fault] = field(default_factory=list)
    requests: list[RecordedRequest] = field(default_factory=list)
    internal_errors: list[str] = field(default_factory=list)
    on_record: Callable[[], None] = lambda: None

    def take_fault(self, method: str, path: str) -> Fault | None:
        """The first fault matching this request, spent by one."""
        for fault in self.faults:
            if fault.matches(method, path):
                fault.hits += 1
                return fault
        return None

    def auth(self, request: web.Request, route: str | None) -> Auth:
        """How the request authenticated."""
        header = request.headers.get("Authorization")
        if header == f"Bot {self.token}":
            return Auth.BOT
        if header:
            return Auth.INVALID
        if route is not None and _token_route(route):
            return Auth.INTERACTION_TOKEN
        return Auth.NONE


def _token_route(route: str) -> bool:
    template = route.split(" ", 1)[1]
    return template.startswith(_TOKEN_ROUTES)


def route_of(request: web.Request) -> str | None:
    """`METHOD /template` of the matched route, None for routes the emulator lacks."""
    resource = request.match_info.route.resource
    canonical = resource.canonical if resource is not None else UNKNOWN_ROUTE
    if canonical == UNKNOWN_ROUTE:
        return None
    return f"{request.method} {canonical.removeprefix(API_PREFIX)}"


def make_middleware(context: RestContext) -> Any:
    """Record every /api/v10 request; apply auth, faults and Discord's rate-limit headers."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(API_PREFIX + "/"):
            return await handler(request)
        route = route_of(request)
        auth = context.auth(request, route)
        body = Body(None, {})
        try:
            body = await read_body(request)
            request[BODY_KEY] = body
            response = await _answer(context, request, handler, route, auth)
        except ApiError as error:
            response = json_response(error.body(), error.status)
        except Exception:
            context.internal_errors.append(traceback.format_exc())
            response = json_response({"message": "500: Internal Server Error", "code": 0}, 500)
        if "X-RateLimit-Bucket" not in response.headers:
            response.headers.update(_ratelimit_headers(route or request.path))
        _record(context, request, route, auth, body, response.status)
        return response

    return middleware


async def _answer(
    context: RestContext, request: web.Request, handler: Handler, route: str | None, auth: Auth
) -> web.StreamResponse:
    path = request.path.removeprefix(API_PREFIX)
    fault = context.take_fault(request.method, path)
    if fault is not None:
        return _fault_response(fault, route or path)
    needs_bot = route is not None and not _token_route(route) and route not in _OPEN_ROUTES
    if needs_bot and auth is not Auth.BOT:
        raise ApiError(401, ErrorCode.GENERAL, "401: Unauthorized")
    return await handler(request)


def _record(
    context: RestContext,
    request: web.Request,
    route: str | None,
    auth: Auth,
    body: Body,
    status: int,
) -> None:
    recorded = RecordedRequest(
        method=request.method,
        path=request.path.removeprefix(API_PREFIX),
        route=route,
        status=status,
        time_s=time.monotonic(),
        auth=auth,
        query=dict(request.query),
        body=body.json,
        files=tuple(upload.filename for _, upload in sorted(body.files.items())),
    )
    context.requests.append(recorded)
    context.on_record()


def _bucket(route: str) -> str:
    return hashlib.sha1(route.encode()).hexdigest()[:32]


def _ratelimit_headers(route: str) -> dict[str, str]:
    # A generous bucket: discord.py never sleeps unless a test injects a 429.
    return {
        "X-RateLimit-Limit": "1000",
        "X-RateLimit-Remaining": "999",
        "X-RateLimit-Reset": f"{time.time() + 60:.3f}",
        "X-RateLimit-Reset-After": "60.000",
        "X-RateLimit-Bucket": _bucket(route),
    }


def _fault_response(fault: Fault, route: str) -> web.Response:
    if fault.status != 429:
        return json_response({"message": f"{fault.status}: Server Error", "code": 0}, fault.status)
    retry = fault.retry_after_s
    body = {"message": "You are being rate limited.", "retry_after": retry, "global": fault.global_}
    response = json_response(body, 429)
    response.headers.update(
        {
            # discord.py retries a 429 only when it came through Discord's proxy (Via).
            "Via": "1.1 google",
            "Retry-After": str(max(1, math.ceil(retry))),
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": f"{time.time() + retry:.3f}",
            "X-RateLimit-Reset-After": f"{retry:.3f}",
            "X-RateLimit-Bucket": _bucket(route),
            "X-RateLimit-Scope": "global" if fault.global_ else "user",
        }
    )
    if fault.global_:
        response.headers["X-RateLimit-Global"] = "true"
    return response
