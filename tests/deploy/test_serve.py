"""The HTTP server, as a real `picovlm serve` process on 127.0.0.1, and its page in headless Chromium."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from deploy_helpers import demo_image, png_bytes, start_server

QUESTION = "Describe the image."


@pytest.fixture(scope="module")
def server(exported_dir):
    process, url = start_server(exported_dir, "--max-request-bytes", "200000", "--max-new-tokens", "128")
    yield url
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def expected(exported_dir):
    from picovlm.runtime import Runtime

    runtime = Runtime.load(exported_dir)
    return lambda image, n=128: runtime.answer(image, QUESTION, max_new_tokens=n)


def chat_body(image_bytes: bytes, **extra) -> dict:
    url = "data:image/png;base64," + base64.b64encode(image_bytes).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}]
    return {"messages": [{"role": "user", "content": content}], **extra}


def test_answer_multipart_and_json(server, expected):
    image = demo_image(2)
    want = expected(image, 40)
    r = httpx.post(f"{server}/v1/answer", files={"image": ("x.png", png_bytes(image), "image/png")},
                   data={"question": QUESTION, "max_new_tokens": "40"}, timeout=30)  # fmt: skip
    assert r.status_code == 200 and r.json()["answer"] == want
    r = httpx.post(
        f"{server}/v1/answer",
        json={"image": base64.b64encode(png_bytes(image)).decode(), "max_new_tokens": 40},
    )
    assert r.status_code == 200 and r.json()["answer"] == want


def test_chat_completions_plain_and_streamed(server, expected):
    image = demo_image(3)
    r = httpx.post(
        f"{server}/v1/chat/completions", json=chat_body(png_bytes(image), max_tokens=128), timeout=30
    )
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == expected(image)
    pieces, done = [], False
    with httpx.stream(
        "POST", f"{server}/v1/chat/completions", json=chat_body(png_bytes(image), stream=True), timeout=30
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            delta = json.loads(line[6:])["choices"][0]["delta"]
            pieces.append(delta.get("content", ""))
    assert done and len(pieces) > 3 and "".join(pieces) == expected(image)


@pytest.mark.parametrize(
    "kind, status, words",
    [
        ("not an image", 400, "cannot read the image"),
        ("pixel bomb", 400, "over the limit"),
        ("too many bytes", 413, "over the limit"),
        ("too many tokens", 400, "max_new_tokens"),
        ("bad json", 400, "not valid JSON"),
        ("no image part", 400, "exactly one image_url"),
        ("bad base64", 400, "not valid base64"),
        ("remote url", 400, "does not fetch URLs"),
        ("long question", 400, "characters, over the limit"),
    ],
)
def test_bad_requests_get_clear_4xx_and_the_server_lives_on(server, kind, status, words):
    from PIL import Image

    good = png_bytes(demo_image(0))
    if kind == "not an image":
        r = httpx.post(f"{server}/v1/answer", files={"image": ("x.png", b"hello", "image/png")})
    elif kind == "pixel bomb":  # 10000 x 10000 one-bit PNG: ~12 kB on the wire, 100 M pixels decoded
        bomb = png_bytes(Image.new("1", (10000, 10000)))
        assert len(bomb) < 200000
        r = httpx.post(f"{server}/v1/answer", files={"image": ("bomb.png", bomb, "image/png")})
    elif kind == "too many bytes":
        r = httpx.post(f"{server}/v1/answer", files={"image": ("big.png", os.urandom(300000), "image/png")})
    elif kind == "too many tokens":
        r = httpx.post(
            f"{server}/v1/answer",
            files={"image": ("x.png", good, "image/png")},
            data={"max_new_tokens": "5000"},
        )
    elif kind == "bad json":
        r = httpx.post(
            f"{server}/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
        )
    elif kind == "no image part":
        r = httpx.post(
            f"{server}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
        )
    elif kind == "long question":
        r = httpx.post(
            f"{server}/v1/answer",
            files={"image": ("x.png", good, "image/png")},
            data={"question": "why " * 1000},
        )
    elif kind == "bad base64":
        r = httpx.post(f"{server}/v1/answer", json={"image": "@@not base64@@"})
    else:
        body = {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}],
                }
            ]
        }
        r = httpx.post(f"{server}/v1/chat/completions", json=body)
    assert r.status_code == status
    assert words in r.json()["error"]["message"]
    assert httpx.get(f"{server}/health").json()["status"] == "ok"


def test_a_full_server_queues_then_answers_429_only_past_the_queue_and_the_wait(exported_dir):
    """One slot, held by the test (in-process, real app and runtime): the next request waits its turn and
    is answered when the slot frees; one more than the queue holds gets 429 at once; a request still
    waiting after --max-wait-seconds gets 429 then."""
    from concurrent.futures import ThreadPoolExecutor

    from starlette.testclient import TestClient

    from picovlm.runtime import Runtime
    from picovlm.serve.app import ServeLimits, build_app

    runtime = Runtime.load(exported_dir)
    body = chat_body(png_bytes(demo_image(0)), max_tokens=4)
    app = build_app(runtime, ServeLimits(max_concurrent=1, max_queue=1, max_wait_seconds=30))
    slots = app.state.slots
    with TestClient(app) as client, ThreadPoolExecutor(1) as pool:
        client.portal.call(slots.acquire)  # a generation in flight
        queued = pool.submit(client.post, "/v1/chat/completions", json=body)
        deadline = time.time() + 10
        while client.get("/health").json()["queued"] != 1:
            assert time.time() < deadline and not queued.done(), "the request did not queue"
            time.sleep(0.01)
        started = time.perf_counter()
        r = client.post("/v1/chat/completions", json=body)  # the queue is full: refused at once
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert "1 requests in flight, 1 waiting" in r.json()["error"]["message"]
        assert time.perf_counter() - started < 2
        assert not queued.done()
        client.portal.call(slots.release)  # the slot passes to the queued request
        assert queued.result(timeout=30).status_code == 200
        assert (slots.active, len(slots.waiting)) == (0, 0)

    app = build_app(runtime, ServeLimits(max_concurrent=1, max_queue=4, max_wait_seconds=0.3))
    slots = app.state.slots
    with TestClient(app) as client:
        client.portal.call(slots.acquire)
        started = time.perf_counter()
        r = client.post("/v1/chat/completions", json=body)
        assert (
            r.status_code == 429 and "no generation slot freed within 0.3 s" in r.json()["error"]["message"]
        )
        assert 0.3 <= time.perf_counter() - started < 5
        assert client.get("/health").json()["queued"] == 0
        client.portal.call(slots.release)
        assert client.post("/v1/chat/completions", json=body).status_code == 200
        assert (slots.active, len(slots.waiting)) == (0, 0)


def test_bad_queue_limits_are_clear_errors():
    from picovlm.errors import ConfigError
    from picovlm.serve.app import ServeLimits

    with pytest.raises(ConfigError, match="--max-queue"):
        ServeLimits(max_queue=-1)
    with pytest.raises(ConfigError, match="--max-concurrent must be at least 1"):
        ServeLimits(max_concurrent=0)


BURST_REQUESTS, BURST_CLIENTS = 400, 16


def test_a_burst_from_16_clients_is_served_not_refused(exported_dir):
    """400 requests from 16 clients at once against a server pinned to one core, default flags: the
    queue absorbs the burst (the old server served 36 and refused 364 with 429 within 0.3 s)."""
    from concurrent.futures import ThreadPoolExecutor

    process, url = start_server(exported_dir, prefix=("taskset", "-c", "0"))
    image = base64.b64encode(png_bytes(demo_image(1))).decode()

    def client(k: int) -> list[int]:
        with httpx.Client(timeout=60) as http:
            return [
                http.post(f"{url}/v1/answer", json={"image": image, "max_new_tokens": 8}).status_code
                for _ in range(k, BURST_REQUESTS, BURST_CLIENTS)
            ]

    try:
        with ThreadPoolExecutor(BURST_CLIENTS) as pool:
            codes = [code for codes in pool.map(client, range(BURST_CLIENTS)) for code in codes]
        health = httpx.get(f"{url}/health").json()
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert len(codes) == BURST_REQUESTS
    assert codes.count(200) >= 0.99 * BURST_REQUESTS, {c: codes.count(c) for c in set(codes)}
    assert (health["in_flight"], health["queued"]) == (0, 0)


@pytest.mark.parametrize("chunked", [False, True])
def test_an_over_size_body_gets_413_even_from_a_client_that_sends_it_all_first(server, chunked):
    """20 MB against --max-request-bytes 200000, from urllib (it writes the whole body, then reads, and
    asks to close the connection): a server that closes with the body unread resets the connection
    before the client reads the 413. Declared in Content-Length, or chunked and growing past the limit."""
    import urllib.error
    import urllib.request

    body = os.urandom(20_000_000)
    data = (body[i : i + 65536] for i in range(0, len(body), 65536)) if chunked else body
    request = urllib.request.Request(
        f"{server}/v1/answer", data=data, headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=60)
    assert caught.value.code == 413
    assert "over the limit of 200000" in json.loads(caught.value.read())["error"]["message"]
    assert httpx.get(f"{server}/health").json()["status"] == "ok"


@pytest.mark.integration
def test_web_page_uploads_an_image_and_shows_the_streamed_answer(chromium, server, expected, tmp_path):
    import websocket  # websocket-client, a dev extra (pip install -e ".[dev]")

    image = demo_image(4)
    image_path = tmp_path / "scene.png"
    image_path.write_bytes(png_bytes(image))
    profile = Path(tempfile.mkdtemp(prefix="chromium-", dir=tmp_path))
    browser = subprocess.Popen(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--remote-debugging-port=0", f"{server}/"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.time() + 30
        while not port_file.is_file() or not port_file.read_text().strip():
            assert time.time() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page"]
        ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=20, suppress_origin=True)
        counter = iter(range(1, 10**6))

        def call(method: str, **params):
            message_id = next(counter)
            ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
            while True:
                reply = json.loads(ws.recv())
                if reply.get("id") == message_id:
                    assert "error" not in reply, reply
                    return reply["result"]

        def evaluate(expression: str):
            return call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

        while evaluate("document.readyState") != "complete" or not evaluate(
            "!!document.getElementById('image')"
        ):
            assert time.time() < deadline, "the page did not load"
            time.sleep(0.1)
        root = call("DOM.getDocument")["root"]["nodeId"]
        node = call("DOM.querySelector", nodeId=root, selector="#image")["nodeId"]
        call("DOM.setFileInputFiles", nodeId=node, files=[str(image_path)])
        evaluate("document.getElementById('ask').click()")
        deadline = time.time() + 30
        while (status := evaluate("document.getElementById('status').textContent")) != "done":
            assert not status.startswith("error"), status
            assert time.time() < deadline, f"no answer within 30 s (status {status!r})"
            time.sleep(0.1)
        assert evaluate("document.getElementById('answer').textContent") == expected(image, 128)
        ws.close()
    finally:
        browser.terminate()
        browser.wait(timeout=10)


def test_serve_exports_a_save_pretrained_folder_on_the_fly(trained_model_dir, tmp_path, expected):
    """`picovlm serve --model <save_pretrained folder>` runs `picovlm export` in a child, then serves the result."""
    process, url = start_server(trained_model_dir, "--cache-dir", str(tmp_path / "cache"))
    try:
        health = httpx.get(f"{url}/health").json()
        assert health["quantization"] == "fp32"
        assert len(list((tmp_path / "cache").glob("*/manifest.json"))) == 1
        image = demo_image(5)
        r = httpx.post(
            f"{url}/v1/answer",
            json={"image": base64.b64encode(png_bytes(image)).decode(), "max_new_tokens": 30},
        )
        assert r.json()["answer"] == expected(image, 30)
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_cli_help_lists_every_option():
    from picovlm.cli import build_parser

    parser = build_parser()
    for verb, options in {"export": ["--model", "--out", "--quantize", "--eval-items"],
                          "serve": ["--model", "--host", "--port", "--max-concurrent", "--max-image-pixels",
                                    "--max-queue", "--max-wait-seconds"]}.items():  # fmt: skip
        text = parser._subparsers._group_actions[0].choices[verb].format_help()
        assert all(option in text for option in options), verb
