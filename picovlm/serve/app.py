"""The HTTP server: a Starlette app over one `Runtime`, with limits that keep one small machine standing.

    GET  /                     a web page: pick an image, ask, watch the answer stream in
    GET  /health               {"status": "ok", model facts, requests in flight}
    POST /v1/answer            multipart (image file + form fields) or JSON (image as base64);
                               fields: question, max_new_tokens, temperature, top_k, top_p,
                               repetition_penalty, seed, stream
    POST /v1/chat/completions  OpenAI-style: messages with text and image_url (data: URL) parts;
                               max_tokens, temperature, top_p, top_k, repetition_penalty, seed, stream
                               (server-sent events)

A request's generation fields override the server's GenerationConfig (`picovlm serve`'s generation
flags over the exported folder's own config, picovlm/generation.py): a request that names none is
answered exactly as `picovlm eval` answers with that config.

Limits: request bytes (413, decided from Content-Length before reading the body, or as a chunked body
grows past it), image pixels (checked from the header, before decoding), max new tokens, and requests
in flight. A request that finds every generation slot busy waits its turn in a first-come first-served
queue; only past the queue's size or the wait limit does it get 429 with Retry-After, so a burst of
short answers is served rather than refused. Every error is JSON {"error": {"message", "type"}} with a
4xx status; an unexpected failure is a 500 for that request only. Generation runs in a worker thread,
so the event loop keeps serving /health, queueing and refusing while a request computes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from picovlm.config import DEFAULT_QUESTION
from picovlm.errors import ConfigError
from picovlm.generation import GenerationConfig, copy_options_check
from picovlm.runtime import ImageError, Runtime, open_image


@dataclass
class ServeLimits:
    max_request_bytes: int = 10 * 1024 * 1024  # the whole request body, image included
    max_image_pixels: int = 40_000_000  # width x height, read from the image header
    max_new_tokens: int = 256  # the most a request may ask (--max-new-tokens-limit)
    max_concurrent: int = 2  # generations in flight; one core gains nothing from more
    # Requests waiting for a slot, and how long each may wait. A queued request holds its body (up to
    # max_request_bytes), so the queue's size also bounds memory: 32 x a ~100 kB image is nothing.
    max_queue: int = 32
    max_wait_seconds: float = 10.0

    def __post_init__(self):
        for name in ("max_request_bytes", "max_image_pixels", "max_new_tokens", "max_concurrent"):
            flag = "max-new-tokens-limit" if name == "max_new_tokens" else name.replace("_", "-")
            if getattr(self, name) < 1:
                raise ConfigError(f"--{flag} must be at least 1, got {getattr(self, name)}.")
        if self.max_queue < 0 or self.max_wait_seconds < 0:
            raise ConfigError(
                f"--max-queue ({self.max_queue}) and --max-wait-seconds ({self.max_wait_seconds}) cannot be "
                "negative: 0 refuses a request at once when every slot is busy."
            )


class ApiError(Exception):
    """A request the server refuses: becomes a JSON error with this status."""

    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", headers: dict | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers


def busy(message: str) -> ApiError:
    return ApiError(429, f"{message}: retry in a moment.", "rate_limit_error", {"Retry-After": "1"})


class Slots:
    """Generations in flight (at most `size`) and the queue of requests waiting for one.

    The queue is first come, first served: a finished generation hands its slot straight to the
    longest-waiting request. A request finding the queue full (`max_queue` waiting), or still waiting
    after `max_wait` seconds, is refused with 429. Only the event loop touches this, so it needs no lock.
    """

    def __init__(self, size: int, max_queue: int = 0, max_wait: float = 0.0):
        self.size, self.max_queue, self.max_wait = size, max_queue, max_wait
        self.active = 0
        self.waiting: deque[asyncio.Future] = deque()  # one future per queued request, oldest first

    async def acquire(self) -> None:
        if self.active < self.size and not self.waiting:
            self.active += 1
            return
        if len(self.waiting) >= self.max_queue:
            raise busy(f"the server is busy ({self.active} requests in flight, {len(self.waiting)} waiting)")
        turn = asyncio.get_running_loop().create_future()
        self.waiting.append(turn)
        try:
            await asyncio.wait_for(turn, self.max_wait)
        except (asyncio.TimeoutError, asyncio.CancelledError) as err:
            if turn.done() and not turn.cancelled():  # the slot reached us just as the wait ended
                if isinstance(err, asyncio.TimeoutError):
                    return  # it is ours: use it
                self.release()  # the client went away: pass the slot on
                raise
            if turn in self.waiting:
                self.waiting.remove(turn)
            if isinstance(err, asyncio.TimeoutError):
                raise busy(f"no generation slot freed within {self.max_wait:g} s") from None
            raise

    def release(self) -> None:
        while self.waiting:
            turn = self.waiting.popleft()
            if not turn.done():  # skips requests whose wait ran out or whose client left
                turn.set_result(None)  # the slot passes on: `active` stays the same
                return
        self.active -= 1


DRAIN_SECONDS = 10.0  # how long an early reply (413) goes on reading what the client still sends


class FinishReadingBody:
    """ASGI middleware: a reply sent before the request body was read to its end (a 413 decided from
    Content-Length, or from a chunked body that grew past the limit) holds back its end while the rest
    of the body is read and thrown away, for at most DRAIN_SECONDS.

    Why: closing a connection with unread bytes in its socket makes the kernel answer with a reset, and
    a client that writes its whole body before reading (urllib, requests with Connection: close) then
    reports "connection reset" instead of the 413. Clients that read early (curl) see the reply at once.
    """

    def __init__(self, app, seconds: float = DRAIN_SECONDS):
        self.app, self.seconds = app, seconds

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        body_done = headers.get(b"content-length", b"0") == b"0" and b"transfer-encoding" not in headers

        async def tracking_receive():
            nonlocal body_done
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def read_rest() -> None:
            while not body_done:
                await tracking_receive()  # each chunk is dropped at once: nothing is kept

        async def finishing_send(message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body") and not body_done:
                await send({**message, "more_body": True})  # the reply so far goes out now
                try:
                    await asyncio.wait_for(read_rest(), self.seconds)
                except asyncio.TimeoutError:
                    pass  # a client still sending after this long gets the reset
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app(scope, tracking_receive, finishing_send)


# --- Reading requests --------------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` bytes (whatever Content-Length claims)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(
            413, f"the request is {declared} bytes, over the limit of {limit}: send a smaller image."
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request is over the limit of {limit} bytes: send a smaller image.")
        chunks.append(chunk)
    return b"".join(chunks)


def decode_base64_image(value: Any, field: str) -> bytes:
    """Raw base64 or a data: URL (data:image/png;base64,....) -> bytes."""
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"'{field}' must be a base64 string or a data: URL holding the image.")
    if value.startswith("data:"):
        header, _, value = value.partition(",")
        if ";base64" not in header:
            raise ApiError(
                400, f"'{field}': only base64 data: URLs are accepted (data:image/png;base64,...)."
            )
    elif value.startswith(("http://", "https://")):
        raise ApiError(
            400, f"'{field}': the server does not fetch URLs; send the image as a base64 data: URL."
        )
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"'{field}' is not valid base64.") from None


def generation_options(
    fields: dict[str, Any],
    limits: ServeLimits,
    base: GenerationConfig,
    max_tokens_key: str = "max_new_tokens",
) -> GenerationConfig:
    """The server's config `base` with the generation fields a request gives (strings from a form, or
    JSON values), each checked."""

    def number(key: str, kind, low, high):
        value = fields.get(key)
        if value is None or value == "":
            return None
        try:
            value = kind(value)
        except (TypeError, ValueError):
            raise ApiError(
                400, f"'{key}' must be a{'n integer' if kind is int else ' number'}, got {value!r}."
            ) from None
        if not low <= value <= high:
            raise ApiError(400, f"'{key}'={value} is out of range: use a value in [{low}, {high}].")
        return value

    given = {
        "max_new_tokens": number(max_tokens_key, int, 1, limits.max_new_tokens),
        "temperature": number("temperature", float, 0.0, 5.0),
        "top_k": number("top_k", int, 0, 1_000_000),
        "top_p": number("top_p", float, 0.0, 1.0),
        "repetition_penalty": number("repetition_penalty", float, 0.0, 10.0),
        "seed": number("seed", int, 0, 2**63 - 1),
    }
    try:
        return base.replace(**{k: v for k, v in given.items() if v is not None})
    except ConfigError as err:
        raise ApiError(400, str(err)) from None


async def parse_answer_request(
    request: Request, limits: ServeLimits, base: GenerationConfig
) -> tuple[bytes, str, GenerationConfig, bool]:
    """(image bytes, question, generation config, stream) from a multipart form or a JSON body."""
    body = await read_body(request, limits.max_request_bytes)
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):

        async def replay() -> dict:  # the form parser reads the body we already read (and size-checked)
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form()
        except Exception as err:
            raise ApiError(400, f"cannot parse the multipart form: {err}.") from None
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise ApiError(400, "the form needs a file field 'image'.")
        image = await upload.read()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
    elif content_type.startswith("application/json") or not content_type:
        fields = parse_json(body)
        image = decode_base64_image(fields.get("image"), "image")
    else:
        raise ApiError(
            415,
            f"content type {content_type!r} is not accepted: use multipart/form-data or application/json.",
        )
    question = check_question(fields.get("question") or DEFAULT_QUESTION)
    stream = str(fields.get("stream", "false")).lower() in ("1", "true", "yes")
    return image, question, generation_options(fields, limits, base), stream


def parse_json(body: bytes) -> dict:
    try:
        data = json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the body is not valid JSON: {err}.") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the JSON body must be an object.")
    return data


def parse_chat_request(data: dict) -> tuple[bytes, str]:
    """The last user message's image (one data: URL) and text from OpenAI-style `messages`."""
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects.")
    user = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not user:
        raise ApiError(400, "'messages' has no message with role 'user'.")
    content = user[-1].get("content")
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(parts, list):
        raise ApiError(400, "a user message's 'content' must be a string or a list of content parts.")
    texts, images = [], []
    for i, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            images.append(decode_base64_image(url, f"content[{i}].image_url.url"))
        else:
            raise ApiError(400, f"content[{i}] has type {kind!r}: use 'text' or 'image_url'.")
    if len(images) != 1:
        raise ApiError(400, f"send exactly one image_url part (got {len(images)}).")
    return images[0], check_question(" ".join(t for t in texts if t).strip() or DEFAULT_QUESTION)


MAX_QUESTION_CHARS = 2000  # a prompt longer than the model was trained on only costs time


def check_question(question: Any) -> str:
    if not isinstance(question, str):
        raise ApiError(400, "'question' must be a string.")
    if len(question) > MAX_QUESTION_CHARS:
        raise ApiError(
            400, f"the question is {len(question)} characters, over the limit of {MAX_QUESTION_CHARS}."
        )
    return question


# --- The app -------------------------------------------------------------------------------------------


def sse(data: Any) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


class Server:
    """The request handlers over one `Runtime`: generation slots, limits, and the server's generation
    config (`generation`, default: the runtime's own), which answers a request that sets no field."""

    def __init__(self, runtime: Runtime, limits: ServeLimits, generation: GenerationConfig | None = None):
        self.runtime, self.limits = runtime, limits
        self.generation = generation or runtime.generation
        if self.generation.max_new_tokens > limits.max_new_tokens:
            raise ConfigError(
                f"the server's max_new_tokens={self.generation.max_new_tokens} is over the limit a request may "
                f"ask ({limits.max_new_tokens}): raise --max-new-tokens-limit or lower --max-new-tokens."
            )
        self.slots = Slots(limits.max_concurrent, limits.max_queue, limits.max_wait_seconds)
        self.model_name = runtime.directory.name
        self.page = resources.files("picovlm.serve").joinpath("page.html").read_text(encoding="utf-8")

    def decode(self, image_bytes: bytes):
        try:
            return open_image(image_bytes, self.limits.max_image_pixels)
        except ImageError as err:
            raise ApiError(400, str(err), "invalid_image") from None

    async def generate(self, image_bytes: bytes, question: str, options: GenerationConfig) -> str:
        await self.slots.acquire()  # first: waits its turn, or a busy server refuses before decoding
        try:
            # Decoded in a thread: a large image would stall the event loop.
            image = await run_in_threadpool(self.decode, image_bytes)
            return await run_in_threadpool(self.runtime.answer, image, question, options)
        finally:
            self.slots.release()

    async def streaming(
        self, image_bytes: bytes, question: str, options: GenerationConfig, wrap
    ) -> StreamingResponse:
        """SSE of `wrap(piece)` per text piece, then `wrap(None)` (the closing event(s))."""
        await self.slots.acquire()  # before the response starts, so a busy server still answers 429
        try:
            image = await run_in_threadpool(self.decode, image_bytes)
        except BaseException:
            self.slots.release()
            raise

        async def events() -> AsyncIterator[str]:
            try:
                async for piece in iterate_in_threadpool(self.runtime.stream(image, question, options)):
                    yield wrap(piece)
                yield wrap(None)
            except Exception as err:  # the status line is already sent: report the failure in the stream
                yield sse({"error": {"message": f"generation failed: {err}", "type": "server_error"}})
            finally:
                self.slots.release()

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    async def index(self, request: Request) -> Response:
        return HTMLResponse(self.page)

    async def health(self, request: Request) -> Response:
        return JSONResponse({
            "status": "ok", "model": self.model_name, "quantization": self.runtime.quantization,
            "in_flight": self.slots.active, "queued": len(self.slots.waiting), "limits": asdict(self.limits),
            "generation": self.generation.to_dict(),
        })  # fmt: skip

    async def answer(self, request: Request) -> Response:
        image, question, options, stream = await parse_answer_request(request, self.limits, self.generation)
        if stream:
            return await self.streaming(
                image, question, options, lambda p: sse({"text": p}) if p is not None else sse("[DONE]")
            )
        started = time.perf_counter()
        text = await self.generate(image, question, options)
        return JSONResponse({"answer": text, "seconds": round(time.perf_counter() - started, 4)})

    async def chat_completions(self, request: Request) -> Response:
        data = parse_json(await read_body(request, self.limits.max_request_bytes))
        image, question = parse_chat_request(data)
        options = generation_options(data, self.limits, self.generation, max_tokens_key="max_tokens")
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        common = {"id": completion_id, "created": created, "model": self.model_name}
        if data.get("stream"):

            def chunk(piece: str | None) -> str:
                if piece is None:
                    done = {**common, "object": "chat.completion.chunk",
                            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}  # fmt: skip
                    return sse(done) + sse("[DONE]")
                delta = {"role": "assistant", "content": piece}
                return sse({**common, "object": "chat.completion.chunk",
                            "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})  # fmt: skip

            return await self.streaming(image, question, options, chunk)
        text = await self.generate(image, question, options)
        return JSONResponse({
            **common, "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        })  # fmt: skip


async def api_error(request: Request, err: ApiError) -> Response:
    return JSONResponse(
        {"error": {"message": err.message, "type": err.kind}}, err.status, headers=err.headers
    )


async def server_error(request: Request, err: Exception) -> Response:
    return JSONResponse({"error": {"message": f"internal error: {err}", "type": "server_error"}}, 500)


def build_app(
    runtime: Runtime, limits: ServeLimits | None = None, generation: GenerationConfig | None = None
) -> Starlette:
    """The app over `runtime`; `generation` (default: the runtime's own config) answers a request that
    sets no generation field."""
    limits = limits or ServeLimits()
    copy_options_check(generation or runtime.generation, runtime.retrieval)  # at start, not per request
    server = Server(runtime, limits, generation)
    routes = [
        Route("/", server.index),
        Route("/health", server.health),
        Route("/v1/answer", server.answer, methods=["POST"]),
        Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(FinishReadingBody)],
        exception_handlers={ApiError: api_error, Exception: server_error},
    )
    app.state.slots, app.state.runtime, app.state.limits = server.slots, runtime, limits
    return app


def serve(
    runtime: Runtime,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: ServeLimits | None = None,
    generation: GenerationConfig | None = None,
) -> None:
    """Run the server until interrupted (uvicorn, one process, one event loop)."""
    import uvicorn

    app = build_app(runtime, limits, generation)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
