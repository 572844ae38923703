"""`pip install picovlm` is the deployment box's install: the torch-free runtime and `picovlm serve`.

The slow test installs the plain package from this working tree into a fresh venv (no system site
packages, so nothing of the test environment leaks in), checks torch is absent there, and serves a model
exported by the main environment: the answers over HTTP must equal the in-process runtime's. It needs the
package registry (pip's configured index, as CI has it); without one the install fails the test.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from deploy_helpers import demo_image, free_port, png_bytes

from picovlm import cli

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
QUESTION = "Describe the image."
# Distribution names whose import name differs (the rest: the same, with - as _).
IMPORT_NAMES = {"pyyaml": "yaml"}


def requirement_name(requirement: str) -> str:
    for stop in "<>=![; ":
        requirement = requirement.split(stop)[0]
    return requirement.strip().lower()


def test_the_cli_checks_for_what_the_train_extra_installs():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    train = [requirement_name(r) for r in project["optional-dependencies"]["train"]]
    assert sorted(IMPORT_NAMES.get(name, name.replace("-", "_")) for name in train) == sorted(
        cli.TRAIN_EXTRA_MODULES
    )
    base = {requirement_name(r) for r in project["dependencies"]}
    assert "torch" not in base and not base & set(train), "the plain install must stay torch-free"
    assert "picovlm[train]" in project["optional-dependencies"]["dev"]


def test_a_verb_without_the_train_extra_says_what_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli, "TRAIN_EXTRA_MODULES", ["yaml", "picovlm_no_such_module"])
    assert cli.main(["train", "--preset", "tiny"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "picovlm train needs the training extra: pip install 'picovlm[train]' "
        "(not installed: picovlm_no_such_module)\n"
    )
    # serve is the runtime's verb: it runs (here to the folder check), whatever the train extra
    assert cli.main(["serve", "--model", str(tmp_path)]) == 1
    assert "training extra" not in capsys.readouterr().err


def disk_mb(path: Path) -> float:
    """Space on disk, as `du` counts it (allocated blocks, each hard-linked file once)."""
    seen, total = set(), 0
    for root, _, files in os.walk(path):
        for name in files:
            stat = os.lstat(os.path.join(root, name))
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_blocks * 512
    return total / 2**20


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory) -> Path:
    """A fresh venv with `pip install <this tree>` (not editable). The tree's package files are copied
    first so the build's `build/` and `*.egg-info` land in a temporary folder, not in the checkout."""
    root = tmp_path_factory.mktemp("runtime-install")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "picovlm", source / "picovlm", ignore=shutil.ignore_patterns("__pycache__"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # pip's own cache and configured index (as CI has them); PYTHONPATH would put a checkout in front.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(source)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert install.returncode == 0, (
        f"pip install of the plain package failed:\n{install.stdout}{install.stderr}"
    )
    return venv


def venv_run(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


@pytest.mark.slow
@pytest.mark.integration
def test_the_plain_install_serves_an_exported_model_without_torch(runtime_venv, exported_dir, tmp_path):
    from picovlm.runtime import Runtime

    python, picovlm = runtime_venv / "bin" / "python", runtime_venv / "bin" / "picovlm"
    # Run from an empty folder: nothing of this checkout is importable there.
    no_torch = venv_run(runtime_venv, str(python), "-c", "import torch", cwd=tmp_path)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    where = venv_run(runtime_venv, str(python), "-c", "import picovlm; print(picovlm.__file__)", cwd=tmp_path)
    assert str(runtime_venv) in where.stdout, where.stdout + where.stderr

    for args in (["--help"], ["serve", "--help"]):
        result = venv_run(runtime_venv, str(picovlm), *args, cwd=tmp_path)
        assert result.returncode == 0 and result.stdout.startswith("usage: picovlm"), result.stderr
    train = venv_run(runtime_venv, str(picovlm), "train", cwd=tmp_path)
    assert train.returncode == 1 and train.stderr.startswith(
        "picovlm train needs the training extra: pip install 'picovlm[train]' (not installed: torch"
    ), train.stderr

    # One core, as deployed (docs/deploy.md), where taskset exists.
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    port = free_port()
    server = subprocess.Popen(
        [*pin, str(picovlm), "serve", "--model", str(exported_dir), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            assert server.poll() is None, f"the server exited: {server.stdout.read()}"
            assert time.time() < deadline, "the server did not answer /health within 60 s"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        runtime = Runtime.load(exported_dir)
        for index in (1, 2):
            image = demo_image(index)
            response = httpx.post(
                f"{url}/v1/answer",
                files={"image": ("scene.png", png_bytes(image), "image/png")},
                data={"question": QUESTION, "max_new_tokens": "40"},
                timeout=60,
            )
            assert response.status_code == 200, response.text
            assert response.json()["answer"] == runtime.answer(image, QUESTION, max_new_tokens=40)
        maps = Path(f"/proc/{server.pid}/maps").read_text()
        assert "libtorch" not in maps
        # The figures docs/deploy.md quotes, measured on this machine (pytest -s shows them).
        site = next((runtime_venv / "lib").glob("python*/site-packages"))
        print(
            f"\nruntime-only venv: {disk_mb(runtime_venv):.0f} MB on disk, site-packages {disk_mb(site):.0f} MB; "
            f"server peak RSS after answering {peak_rss_mb(server.pid):.0f} MB "
            f"({'taskset -c 0' if pin else 'unpinned'}; {platform.machine()}, Python {platform.python_version()})"
        )
    finally:
        server.terminate()
        server.wait(timeout=10)
