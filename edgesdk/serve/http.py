"""The OpenAI-compatible HTTP server: many clients, one Model, continuous batching; closed by default.

    server = OpenAIServer(ServerSettings(port=8080), load=lambda: edgesdk.load("smollm2-135m-instruct", n_seq=4))
    server.run()                  # until SIGINT/SIGTERM; or start() / stop() around it (tests)

A thin layer on starlette + uvicorn: request bytes -> openai_api (validation)
-> edgesdk.batching (generation) -> openai_api (shapes). The model loads in
the background after the socket is bound; /health answers 503 until it is
ready.

Safety, every setting in ServerSettings:
- it binds 127.0.0.1 unless told otherwise, and any other address needs an
  API key (Bearer, compared in constant time) on every path but /health;
- a Host allowlist against DNS rebinding: a Host header naming a host must
  be localhost, this machine's name (also NAME.local) or one of
  allowed_hosts; an address literal passes (rebinding needs a name);
- no CORS headers unless cors_origins lists origins, and POSTs must be
  application/json, so a web page cannot send a "simple" cross-origin request;
- caps on the body size, the time to send it, prompt tokens, max_tokens and
  stop lists; unknown fields are refused by name (openai_api);
- a bounded queue (429 with Retry-After), a bound on open connections
  (uvicorn answers 503 beyond it), and a client that disconnects, or takes
  nothing for stall_timeout_s, has its generation cancelled;
- no file paths, pulls or model management over HTTP: the model is chosen
  on the command line;
- logs give sizes, counts and times, never prompt or answer text unless
  log_prompts is set.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import socket
import threading
import time
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Tuple

from ..batching import BatchScheduler, Generation
from ..errors import (ApiRequestError, EdgeSDKError, InvalidArgumentError, MissingDependencyError, QueueFullError,
                      SchedulerClosedError)
from .settings import ServerSettings, is_loopback
from .openai_api import (Answer, check_prompt_length, decode_json, error_body, error_type,
                         model_entry, models_list, parse_request, sse)

try:
    import prometheus_client
    import uvicorn
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route
except ImportError as exc:      # pragma: no cover - the server extra is missing
    raise MissingDependencyError(f"the HTTP server needs {exc.name}: pip install 'edgesdk[server]'") from exc

log = logging.getLogger("edgesdk.serve")

JSON_TYPE = "application/json"
NO_KEY_PATHS = ("/health",)     # liveness probes need no key; it tells nothing but "loading" or "ok"


def host_header_allowed(value: str, names: frozenset) -> bool:
    """Whether a Host header (name or address, with an optional port) is one we serve."""
    if value.startswith("["):           # [v6]:port
        end = value.find("]")
        if end < 0:
            return False
        host = value[1:end]
    else:
        host = value.rsplit(":", 1)[0] if value.count(":") == 1 else value
    host = host.lower().rstrip(".")
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return host in names


def _error(status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
           headers: Optional[Dict[str, str]] = None) -> JSONResponse:
    return JSONResponse(error_body(message, error_type(status), param, code), status_code=status, headers=headers)


class _HostGuard:
    """Refuses a request whose Host header names a host we do not serve (DNS rebinding)."""

    def __init__(self, app, names: frozenset):
        self.app = app
        self.names = names

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if not host or not host_header_allowed(host, self.names):
                await _error(403, "this server does not answer for that Host header", code="host_not_allowed")(
                    scope, receive, send)
                return
        await self.app(scope, receive, send)


class _KeyGuard:
    """Refuses a request without the API key (Authorization: Bearer KEY), compared in constant time."""

    def __init__(self, app, api_key: Optional[str]):
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.expected is not None and scope["path"] not in NO_KEY_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await _error(401, "a valid API key is required (Authorization: Bearer KEY)",
                             code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _Metrics:
    """What GET /metrics reports, in a registry of this server's own."""

    def __init__(self, server: "OpenAIServer"):
        p = prometheus_client
        self.registry = p.CollectorRegistry()
        self.requests = p.Counter("edgesdk_requests", "HTTP requests answered", ["path", "status"],
                                  registry=self.registry)
        self.prompt_tokens = p.Counter("edgesdk_prompt_tokens", "prompt tokens of answered requests",
                                       registry=self.registry)
        self.completion_tokens = p.Counter("edgesdk_completion_tokens", "tokens generated",
                                           registry=self.registry)
        self.ttft = p.Histogram("edgesdk_time_to_first_token_seconds", "from arrival to the first answer token",
                                buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30), registry=self.registry)

        def scheduler_value(read: Callable[[BatchScheduler], float]) -> Callable[[], float]:
            return lambda: read(server.scheduler) if server.scheduler is not None else 0.0

        p.Gauge("edgesdk_queue_depth", "requests waiting for a free sequence",
                registry=self.registry).set_function(scheduler_value(lambda s: s.queue_depth))
        p.Gauge("edgesdk_active_sequences", "requests being answered now",
                registry=self.registry).set_function(scheduler_value(lambda s: s.active))
        p.Gauge("edgesdk_tokens_per_second", "tokens generated per second, all requests, last 10 s",
                registry=self.registry).set_function(scheduler_value(lambda s: s.tokens_per_s))
        p.Gauge("edgesdk_sequences", "sequences (parallel requests) the model holds",
                registry=self.registry).set_function(scheduler_value(lambda s: s.n_seq))

    def render(self) -> Response:
        return Response(prometheus_client.generate_latest(self.registry),
                        media_type=prometheus_client.CONTENT_TYPE_LATEST)


class _EventStream(StreamingResponse):
    """Server-sent events from an async iterator of byte chunks. Every write must be taken within
    stall_timeout_s, and a disconnect is seen while waiting for the next chunk: either ends the stream,
    and `on_end` runs (cancelling the generation) however it ends."""

    def __init__(self, chunks: AsyncIterator[bytes], stall_timeout_s: float, on_end: Callable[[], None]):
        super().__init__(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.chunks = chunks
        self.stall_timeout_s = stall_timeout_s
        self.on_end = on_end

    async def __call__(self, scope, receive, send):
        listener = asyncio.ensure_future(_until_disconnect(receive, self.on_end))
        complete = False
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for data in self.chunks:
                if listener.done():
                    return
                await asyncio.wait_for(send({"type": "http.response.body", "body": data, "more_body": True}),
                                       self.stall_timeout_s)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            complete = True
        except asyncio.TimeoutError:
            log.info("a streaming client took nothing for %.0f s: its answer is cancelled", self.stall_timeout_s)
        except OSError as exc:
            log.info("a streaming client went away: %s", exc)
        finally:
            listener.cancel()
            self.on_end()
            await self.chunks.aclose()
            if not complete:
                log.debug("stream ended early")


async def _until_disconnect(receive, on_disconnect: Callable[[], None]) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            on_disconnect()
            return


class OpenAIServer:
    """The app, its model and scheduler, and the uvicorn server that runs them (see the module)."""

    def __init__(self, settings: ServerSettings, model=None, load: Optional[Callable[[], Any]] = None,
                 model_name: Optional[str] = None):
        if (model is None) == (load is None):
            raise InvalidArgumentError("give a loaded model or a load function, one of them")
        self.settings = settings
        self.model = model
        self._load = load
        self.model_name = model_name or (model.name if model is not None else None)
        self.scheduler: Optional[BatchScheduler] = None
        self.load_error: Optional[BaseException] = None
        self.created = int(time.time())
        self.metrics = _Metrics(self)
        self._uvicorn: Optional["uvicorn.Server"] = None
        self._thread: Optional[threading.Thread] = None
        self._socket: Optional[socket.socket] = None
        self.app = self._build_app()

    # -- the app --------------------------------------------------------------------------

    def _build_app(self) -> "Starlette":
        s = self.settings
        middleware = [Middleware(_HostGuard, names=s.host_names())]
        if s.cors_origins:
            middleware.append(Middleware(CORSMiddleware, allow_origins=list(s.cors_origins),
                                         allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"]))
        middleware.append(Middleware(_KeyGuard, api_key=s.api_key))
        routes = [
            Route("/health", self._health, methods=["GET"]),
            Route("/metrics", self._metrics, methods=["GET"]),
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/v1/models/{model_id:path}", self._model, methods=["GET"]),
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/completions", self._text, methods=["POST"]),
        ]
        handlers = {404: self._not_found, 405: self._not_allowed, Exception: self._internal_error}
        return Starlette(routes=routes, middleware=middleware, exception_handlers=handlers, lifespan=self._lifespan)

    def _lifespan(self, app):
        server = self

        class Lifespan:
            async def __aenter__(self):
                if server.scheduler is None:
                    threading.Thread(target=server._start_model, name="edgesdk-load", daemon=True).start()
                self.reaper = asyncio.ensure_future(server._close_silent_connections())

            async def __aexit__(self, *exc):
                self.reaper.cancel()
                await asyncio.get_running_loop().run_in_executor(None, server._stop_model)

        return Lifespan()

    async def _close_silent_connections(self) -> None:
        """Close connections that have not sent a whole request head within header_timeout_s.

        uvicorn times out idle keep-alive connections but not one that never
        finishes its headers, and each open connection counts against
        max_connections: without this, that many silent sockets would lock
        everyone out. It reads uvicorn's connection set and each protocol's
        current cycle; if a uvicorn release renames those, it says so once and
        stops (the server keeps working, without this guard)."""
        waiting_since: Dict[Tuple[int, int], float] = {}
        while True:
            await asyncio.sleep(min(1.0, self.settings.header_timeout_s / 2))
            try:
                connections = list(self._uvicorn.server_state.connections) if self._uvicorn is not None else []
                now = time.monotonic()
                seen = set()
                for protocol in connections:
                    cycle = protocol.cycle
                    if cycle is not None and not cycle.response_complete:
                        continue        # a request is being answered: its body and stall timeouts apply
                    key = (id(protocol), id(cycle))
                    seen.add(key)
                    since = waiting_since.setdefault(key, now)
                    if now - since > self.settings.header_timeout_s:
                        protocol.transport.close()
                waiting_since = {k: v for k, v in waiting_since.items() if k in seen}
            except AttributeError as exc:
                log.warning("cannot watch for silent connections with this uvicorn (%s); the header timeout is off",
                            exc)
                return

    def _start_model(self) -> None:
        try:
            if self.model is None:
                self.model = self._load()
                self.model_name = self.model_name or self.model.name
            self.model.chat_formatter      # built once here, not raced for by the first requests
            self.scheduler = BatchScheduler(self.model, max_queue=self.settings.max_queue)
            log.info("%s: ready, %d sequence%s of %d tokens", self.model_name, self.scheduler.n_seq,
                     "s" if self.scheduler.n_seq != 1 else "", self.model.n_ctx)
        except BaseException as exc:
            self.load_error = exc
            log.error("the model did not load: %s", exc)
            if self._load is not None and self._uvicorn is not None:
                self._uvicorn.should_exit = True    # nothing to serve: `edgesdk serve` exits with the error

    def _stop_model(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()
        if self._load is not None and self.model is not None:
            self.model.close()

    async def _health(self, request: Request) -> Response:
        if self.scheduler is not None:
            return JSONResponse({"status": "ok"})
        if self.load_error is not None:
            return JSONResponse({"status": "error", "error": str(self.load_error)}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "5"})

    async def _metrics(self, request: Request) -> Response:
        return self.metrics.render()

    async def _models(self, request: Request) -> Response:
        if self.model_name is None:
            return self._unavailable()
        return JSONResponse(models_list(self.model_name, self.created))

    async def _model(self, request: Request) -> Response:
        if self.model_name is None:
            return self._unavailable()
        if request.path_params["model_id"] != self.model_name:
            return _error(404, "no such model; GET /v1/models lists the one this server has",
                          "model", "model_not_found")
        return JSONResponse(model_entry(self.model_name, self.created))

    async def _not_found(self, request: Request, exc) -> Response:
        return _error(404, f"no such endpoint: {request.url.path}", code="unknown_url")

    async def _not_allowed(self, request: Request, exc) -> Response:
        return _error(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed")

    async def _internal_error(self, request: Request, exc) -> Response:
        log.error("%s failed: %r", request.url.path, exc, exc_info=exc)
        return _error(500, "the server failed on this request", code="internal_error")

    def _unavailable(self) -> Response:
        if self.load_error is not None:
            return _error(503, "the model failed to load", code="model_load_failed")
        return _error(503, "the model is still loading", code="model_loading", headers={"Retry-After": "5"})

    # -- completions ------------------------------------------------------------------------

    async def _chat(self, request: Request) -> Response:
        return await self._complete(request, "chat")

    async def _text(self, request: Request) -> Response:
        return await self._complete(request, "text")

    async def _complete(self, request: Request, kind: str) -> Response:
        path = request.url.path
        try:
            response = await self._answer(request, kind)
        except ApiRequestError as exc:
            response = _error(exc.status, str(exc), exc.param, exc.code)
        except QueueFullError as exc:
            response = _error(429, f"the server is busy: {exc}", code="rate_limit_exceeded",
                              headers={"Retry-After": str(int(exc.retry_after_s))})
        except SchedulerClosedError:
            response = _error(503, "the server is stopping", code="shutting_down")
        except EdgeSDKError as exc:     # the request's content (template, options) is at fault
            response = _error(400, str(exc))
        self.metrics.requests.labels(path, str(response.status_code)).inc()
        if response.status_code != 200:
            log.info("%s %d", path, response.status_code)
        return response

    async def _answer(self, request: Request, kind: str) -> Response:
        if self.scheduler is None:
            return self._unavailable()
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != JSON_TYPE:
            raise ApiRequestError(f"the body must be {JSON_TYPE}, got {content_type or 'no Content-Type'}",
                                  status=415, code="unsupported_media_type")
        body = decode_json(await self._read_body(request))
        parsed = parse_request(kind, body, self.settings.limits)
        if parsed.model != self.model_name:
            raise ApiRequestError(f"model {parsed.model!r} is not served here; GET /v1/models lists "
                                  f"{self.model_name!r}", "model", status=404, code="model_not_found")
        model = self.model
        config = model.generation.with_options(**parsed.options)
        ids = await asyncio.get_running_loop().run_in_executor(None, self._prompt_ids, parsed)
        if self.settings.log_prompts:
            log.info("prompt (%d tokens): %r", len(ids),
                     parsed.messages if parsed.kind == "chat" else parsed.prompt)
        return await self._run(request, parsed, ids, config)

    def _prompt_ids(self, parsed) -> List[int]:
        from ..chat import chat_prompt_ids

        model = self.model
        limit_ids = self.settings.limits.max_prompt_tokens or model.n_ctx - 1
        limit_ids = min(limit_ids, model.n_ctx - 1)
        param = "messages" if parsed.kind == "chat" else "prompt"
        if parsed.kind == "chat":
            try:
                ids = chat_prompt_ids(model, parsed.messages)
            except InvalidArgumentError as exc:     # ChatFormatError: a role or content is wrong
                raise ApiRequestError(str(exc), "messages") from None
        elif isinstance(parsed.prompt, str):
            ids = model.tokenize(parsed.prompt)
        else:
            check_prompt_length(len(parsed.prompt), limit_ids, param)
            bad = [i for i in parsed.prompt if not 0 <= i < model.n_vocab]
            if bad:
                raise ApiRequestError(f"token id {bad[0]} is outside [0, {model.n_vocab})", "prompt")
            ids = list(parsed.prompt)
        check_prompt_length(len(ids), limit_ids, param)
        if not ids:
            raise ApiRequestError("the prompt produced no tokens", param)
        return ids

    async def _read_body(self, request: Request) -> bytes:
        cap = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > cap):
            raise ApiRequestError(f"the body is larger than {cap} bytes", status=413, code="body_too_large")
        chunks: List[bytes] = []
        size = 0

        async def collect() -> None:
            nonlocal size
            async for chunk in request.stream():
                size += len(chunk)
                if size > cap:
                    raise ApiRequestError(f"the body is larger than {cap} bytes", status=413, code="body_too_large")
                chunks.append(chunk)

        try:
            await asyncio.wait_for(collect(), self.settings.body_timeout_s)
        except asyncio.TimeoutError:
            raise ApiRequestError(f"the body did not arrive within {self.settings.body_timeout_s:g} s", status=408,
                                  code="body_timeout") from None
        return b"".join(chunks)

    async def _run(self, request: Request, parsed, ids: List[int], config) -> Response:
        loop = asyncio.get_running_loop()
        events: "asyncio.Queue" = asyncio.Queue()
        arrived = time.perf_counter()
        generation = self.scheduler.submit(ids, config, on_event=lambda ev: loop.call_soon_threadsafe(
            events.put_nowait, ev))
        answer = Answer(parsed, self.model_name)
        if parsed.stream:
            return _EventStream(self._stream(generation, events, answer, arrived), self.settings.stall_timeout_s,
                                generation.cancel)
        listener = asyncio.ensure_future(_until_disconnect(request.receive, generation.cancel))
        try:
            pieces = []
            while True:
                kind, value = await events.get()
                if kind == "piece":
                    pieces.append(value)
                elif kind == "error":
                    log.warning("generation %d failed: %s", generation.id, value)
                    return _error(500, f"the generation failed: {value}", code="generation_failed")
                else:
                    break
        finally:
            listener.cancel()
            generation.cancel()     # a no-op once finished; stops it when this handler is cancelled
        self._record(generation, arrived)
        return JSONResponse(answer.result("".join(pieces), generation.stats))

    async def _stream(self, generation: Generation, events: "asyncio.Queue", answer: Answer,
                      arrived: float) -> AsyncIterator[bytes]:
        first = answer.first_chunk()
        if first is not None:
            yield first
        while True:
            kind, value = await events.get()
            if kind == "piece":
                yield answer.piece_chunk(value)
            elif kind == "error":
                log.warning("generation %d failed: %s", generation.id, value)
                yield sse(error_body(f"the generation failed: {value}", "server_error", code="generation_failed"))
                return
            else:
                self._record(generation, arrived)
                yield answer.last_chunks(generation.stats)
                return

    def _record(self, generation: Generation, arrived: float) -> None:
        stats = generation.stats
        self.metrics.prompt_tokens.inc(stats.prompt_tokens)
        self.metrics.completion_tokens.inc(stats.completion_tokens)
        if stats.completion_tokens:
            self.metrics.ttft.observe(stats.queued_s + stats.time_to_first_token_s)
        log.info("request %d: %d prompt tokens (%d reused), %d generated, %s; queued %.2f s, first token %.2f s, "
                 "total %.2f s", generation.id, stats.prompt_tokens, stats.reused_tokens, stats.completion_tokens,
                 stats.finish_reason, stats.queued_s, stats.time_to_first_token_s, time.perf_counter() - arrived)

    # -- running --------------------------------------------------------------------------

    def _uvicorn_config(self) -> "uvicorn.Config":
        s = self.settings
        return uvicorn.Config(self.app, host=s.host, port=s.port, http="h11", ws="none", lifespan="on",
                              interface="asgi3", log_config=None, access_log=False, proxy_headers=False,
                              server_header=False, limit_concurrency=s.max_connections,
                              timeout_keep_alive=s.keep_alive_s, timeout_graceful_shutdown=5)

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM (uvicorn's handlers), in this thread."""
        self._uvicorn = uvicorn.Server(self._uvicorn_config())
        self._uvicorn.run()

    def start(self) -> int:
        """Serve in a background thread; returns the port (settings.port 0: one the OS chose)."""
        s = self.settings
        family = socket.AF_INET6 if ":" in s.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((s.host, s.port))
        self._socket = sock
        self._uvicorn = uvicorn.Server(self._uvicorn_config())
        self._thread = threading.Thread(target=self._uvicorn.run, kwargs={"sockets": [sock]},
                                        name="edgesdk-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise EdgeSDKError("the HTTP server did not start")
            time.sleep(0.01)
        return sock.getsockname()[1]

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Block until the model is loaded (or raise its load error)."""
        deadline = time.monotonic() + timeout_s
        while self.scheduler is None:
            if self.load_error is not None:
                raise self.load_error
            if time.monotonic() > deadline:
                raise EdgeSDKError(f"the model did not load within {timeout_s:g} s")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._socket is not None:
            self._socket.close()


__all__ = ["OpenAIServer", "ServerSettings", "host_header_allowed", "is_loopback"]
