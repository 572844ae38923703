"""The HTTP clients against FakeLLMServer (a stand-in for Ollama and OpenAI-compatible servers), and the
reply cache."""

from __future__ import annotations

import socket
import time

import pytest
from fake_llm_server import FakeLLMServer, fake_paraphrase

from picovlm.grow.llm import (
    ChatCache,
    GenerationParams,
    ModelNotFoundError,
    OllamaClient,
    OpenAIClient,
    RequestFailedError,
    RetryPolicy,
    ServerUnavailableError,
    cache_key,
)

FAST = RetryPolicy(timeout=5.0, retries=2, backoff=0.01)
MESSAGES = [{"role": "user", "content": "Rewrite:\n\nThe cat sat on the mat. It was 3 pm."}]


def client_for(kind: str, server: FakeLLMServer, model="fake-model", **kwargs):
    if kind == "ollama":
        return OllamaClient(model, server.url, **kwargs)
    return OpenAIClient(model, server.url + "/v1", **kwargs)


@pytest.mark.parametrize("kind", ["ollama", "openai"])
@pytest.mark.parametrize("stream", [False, True])
def test_chat_returns_reply_streamed_or_not(kind, stream):
    with FakeLLMServer() as server:
        client = client_for(kind, server, retry=FAST, stream=stream)
        reply = client.chat(MESSAGES, GenerationParams(temperature=0.5, seed=3))
        assert reply == fake_paraphrase(MESSAGES[0]["content"], 3)
        # the seed travelled in the wire format of each server
        assert server.requests[-1]["seed"] == 3
        assert server.requests[-1]["path"] == ("/api/chat" if kind == "ollama" else "/v1/chat/completions")


@pytest.mark.parametrize("kind", ["ollama", "openai"])
def test_unknown_model_is_a_clear_error_without_retries(kind):
    with FakeLLMServer() as server:
        client = client_for(kind, server, model="wizardlm2:7b", retry=FAST)
        with pytest.raises(ModelNotFoundError, match="wizardlm2:7b") as info:
            client.chat(MESSAGES, GenerationParams())
        if kind == "ollama":
            assert "ollama pull wizardlm2:7b" in str(info.value)
        assert server.requests == []


@pytest.mark.parametrize("kind", ["ollama", "openai"])
def test_server_errors_are_retried_then_succeed(kind):
    with FakeLLMServer() as server:
        server.fail_next = 2  # two HTTP 500s, then a reply: within 1 + 2 attempts
        client = client_for(kind, server, retry=FAST)
        assert client.chat(MESSAGES, GenerationParams(seed=0)).startswith("To put it another way")
        assert server.fail_next == 0


def test_persistent_server_errors_fail_the_request_with_backoff():
    with FakeLLMServer() as server:
        server.fail_next = 10
        client = client_for("ollama", server, retry=RetryPolicy(timeout=5, retries=2, backoff=0.1))
        start = time.monotonic()
        with pytest.raises(RequestFailedError, match="HTTP 500"):
            client.chat(MESSAGES, GenerationParams())
        assert time.monotonic() - start >= 0.1 + 0.2  # waited backoff, then 2x backoff
        assert server.fail_next == 7  # 3 attempts


@pytest.mark.parametrize("stream", [False, True])
def test_slow_server_times_out(stream):
    with FakeLLMServer(delay=1.0) as server:
        client = client_for(
            "openai", server, retry=RetryPolicy(timeout=0.2, retries=1, backoff=0.01), stream=stream
        )
        with pytest.raises(RequestFailedError, match="no reply within 0.2 s"):
            client.chat(MESSAGES, GenerationParams())


@pytest.mark.parametrize("kind", ["ollama", "openai"])
def test_stream_that_stalls_mid_reply_times_out(kind):
    with FakeLLMServer(chunk_delay=1.0) as server:
        client = client_for(
            kind, server, retry=RetryPolicy(timeout=0.3, retries=0, backoff=0.01), stream=True
        )
        with pytest.raises(RequestFailedError, match="no reply within 0.3 s"):
            client.chat(MESSAGES, GenerationParams())
        assert len(server.requests) == 1  # the reply had started: the stall came mid-stream


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_dead_server_says_how_to_start_one():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    client = OllamaClient("fake-model", url, retry=FAST)
    with pytest.raises(ServerUnavailableError, match=f"no server at {url}; start it with `ollama serve`"):
        client.chat(MESSAGES, GenerationParams())


def test_cache_survives_a_torn_line_and_keys_depend_on_every_parameter(tmp_path):
    path = tmp_path / "cache.jsonl"
    cache = ChatCache(path)
    key = cache_key("ollama", "m", MESSAGES, GenerationParams(seed=1))
    cache.put(key, "first reply")
    cache.close()
    with open(path, "a") as file:
        file.write('{"key": "abc", "rep')  # a write cut short by a kill
    cache = ChatCache(path)
    assert cache.get(key) == "first reply" and cache.torn_lines == 1
    other = cache_key("ollama", "m", MESSAGES, GenerationParams(seed=2))
    cache.put(other, "second reply")
    cache.close()
    reloaded = ChatCache(path)
    assert reloaded.get(other) == "second reply" and reloaded.get(key) == "first reply"
    assert len({other, key, cache_key("openai", "m", MESSAGES, GenerationParams(seed=1))}) == 3
    assert len({key, cache_key("ollama", "m", MESSAGES, GenerationParams(seed=1, temperature=0.1))}) == 2
