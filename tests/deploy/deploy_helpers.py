"""Helpers for the deployment tests: demo images, PNG bytes, and a real `picovlm serve` child process."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image


def demo_image(index: int, seed: int = 1) -> Image.Image:
    from picovlm.data.scenes import make_demo_row

    return Image.open(io.BytesIO(make_demo_row(seed, index, image_size=64)["images"][0]["bytes"])).convert(
        "RGB"
    )


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: Path, *extra: str, prefix: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """`picovlm serve` in a child process on a free port (run under `prefix`, e.g. taskset); returns once
    /health answers."""
    import httpx

    port = free_port()
    process = subprocess.Popen(
        [*prefix, sys.executable, "-m", "picovlm", "serve", "--model", str(model_dir), "--port", str(port), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {process.stdout.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not answer /health within 60 s")
