"""`picovlm augment` end to end against FakeLLMServer (a stand-in for Ollama / OpenAI-compatible servers):
fact-keeping filters, new rows and groups, the report, a dead server, and a run killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_llm_server import FakeLLMServer

from picovlm.cli import main
from picovlm.grow.augment import AugmentConfig, augment_dataset, drop_reason, numbers
from picovlm.grow.llm import OllamaClient, OpenAIClient, RetryPolicy, ServerUnavailableError

FAST = RetryPolicy(timeout=10.0, retries=1, backoff=0.01)
ORIGINAL = (
    "Marie Curie won the Nobel Prize in 1903 and again in 1911. She worked in Paris with two colleagues."
)


@pytest.mark.parametrize(
    "candidate, reason",
    [
        ("", "empty"),
        ("Marie Curie won.", "too_short"),
        (" ".join([ORIGINAL] * 3), "too_long"),
        (
            "In 1903 and 1912 Marie Curie received the Nobel Prize; she worked in Paris with two colleagues.",
            "number",
        ),
        (
            "In 1903 and 1911 Marie Curie received the Nobel Prize; she worked in Paris with 3 colleagues.",
            "number",
        ),
        (
            "In 1903 and 1911 Curie received the Nobel Prize; she worked in the capital with 2 colleagues.",
            "name",
        ),
        (
            "In 1903 and 1911 Marie Curie received the Nobel Prize; she did research in Paris with two colleagues.",
            None,
        ),
        (ORIGINAL.replace("won", "received"), "same_as_original"),
    ],
)
def test_drop_reason(candidate, reason):
    assert drop_reason(candidate, ORIGINAL, [], AugmentConfig()) == reason


SCENE = (
    "We can see two shapes on a black background. At the bottom center there is a large yellow triangle. "
    "At the bottom right there is a large pink square."
)


def test_a_reply_about_something_else_is_off_topic_even_when_it_keeps_the_numbers():
    """SmolLM2 wrote this kind of reply for a demo scene and the number/name/key-term filters kept it."""
    junk = (
        "This picture has two numbers, a name, a colour and a place. It cannot have hidden numbers or names."
    )
    assert drop_reason(junk, SCENE, [], AugmentConfig()) == "off_topic"
    rewritten = "Two shapes sit on a black backdrop: a big yellow triangle at the bottom centre and a big pink square at the bottom right."
    assert drop_reason(rewritten, SCENE, [], AugmentConfig()) is None
    assert drop_reason(junk, SCENE, [], AugmentConfig(min_content_share=0.0)) is None  # the knob


def test_key_terms_and_duplicates():
    config = AugmentConfig(key_terms=("radium",))
    original = "She filmed radium with an iPhone and an H100 cluster of friends in the lab."
    lost_user_term = "With friends in the lab she filmed it using an iPhone and an H100 cluster."
    assert drop_reason(lost_user_term, original, [], config) == "key_term"
    lost_tech_token = "With friends in the lab she filmed radium using a phone and an H100 cluster."
    assert drop_reason(lost_tech_token, original, [], config) == "key_term"
    kept = ["In the lab, with friends, an iPhone and an H100 cluster, she filmed radium."]
    again = "In the lab, with friends, an iPhone and an H100 cluster, she filmed radium!"
    assert drop_reason(again, original, kept, config) == "duplicate"
    assert numbers("two cats and 2 dogs, 1,500 birds") == numbers("2 cats and two dogs, 1500 birds")


@pytest.mark.parametrize("backend", ["ollama", "openai"])
def test_augment_grows_demo_and_cities_keeping_images_and_groups(backend, demo_dir, cities_dir, tmp_path):
    from picovlm.data.cauldron import load_cauldron

    with FakeLLMServer() as server:
        for name, source in [("demo", demo_dir), ("cities", cities_dir)]:
            url = server.url if backend == "ollama" else server.url + "/v1"
            client = (OllamaClient if backend == "ollama" else OpenAIClient)(
                "fake-model", url, retry=FAST, stream=True
            )
            report = augment_dataset(
                str(source), str(tmp_path / name), client, AugmentConfig(n_variants=5, concurrency=3)
            )
            original = load_cauldron(source)
            grown = load_cauldron(tmp_path / name)
            n = len(original)
            # fake replies by seed: 0 = good, 1 = number, 2 = copy, 3 = good or duplicate, 4 = too short
            assert report["dropped"]["number"] == n and report["dropped"]["same_as_original"] == n
            assert report["dropped"]["too_short"] == n
            assert n <= report["rows_new"] <= 2 * n and len(grown) == n + report["rows_new"]
            assert report["requests"]["sent"] == 5 * n and report["requests"]["cache_hits"] == 0
            groups = {}
            for i in range(n):
                groups[grown[i]["group"]] = i
                assert grown[i]["texts"] == original[i]["texts"]
            for row in grown.select(range(n, len(grown))):
                i = groups[row["group"]]  # every new row belongs to an original's group ...
                assert row["texts"][0]["source"] == f"synthetic:{backend}/fake-model"
                assert row["texts"][0]["assistant"] != original[i]["texts"][0]["assistant"]
                assert (
                    row["images"][0].tobytes() == original[i]["images"][0].tobytes()
                )  # ... and keeps its image
            assert (tmp_path / name / "augment_report.md").read_text().startswith("# Augment report")
            diversity = json.loads((tmp_path / name / "augment_report.json").read_text())["diversity"]
            assert diversity["distinct_2_after"] > 0 and diversity["self_bleu_within_groups"] > 0
        # a rerun asks nothing: every reply comes from the cache
        before = len(server.requests)
        report = augment_dataset(
            str(cities_dir), str(tmp_path / "cities"), client, AugmentConfig(n_variants=5), overwrite=True
        )
        assert len(server.requests) == before and report["requests"]["cache_hits"] == 5 * len(original)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_when_every_paraphrase_is_dropped_the_run_still_ends_with_a_report(demo_dir, tmp_path, capsys):
    """SmolLM2-135M on the demo answers invented facts and every paraphrase was dropped: with --only-new
    that left nothing to save, which crashed in datasets; now an empty set, the report and a warning."""
    from picovlm.data.cauldron import load_cauldron

    with FakeLLMServer() as server:  # seed 4: a one-word reply, always dropped as too short
        code = main(["augment", str(demo_dir), "--out", str(tmp_path / "out"), "--url", server.url,
                     "--model", "fake-model", "-n", "1", "--seed", "4", "--only-new"])  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    assert "kept 0 of" in captured.out and "every paraphrase was dropped" in captured.err
    assert len(load_cauldron(tmp_path / "out")) == 0
    report = json.loads((tmp_path / "out" / "augment_report.json").read_text())
    assert report["rows_new"] == 0 and report["dropped"]["too_short"] == report["paraphrases_requested"] > 0


def test_dead_server_stops_the_run_with_a_clear_message(demo_dir, tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    client = OllamaClient("fake-model", url, retry=FAST)
    with pytest.raises(ServerUnavailableError, match="ollama serve"):
        augment_dataset(str(demo_dir), str(tmp_path / "out"), client, AugmentConfig(n_variants=2))
    assert not (tmp_path / "out").exists()
    code = main(
        [
            "augment",
            str(demo_dir),
            "--out",
            str(tmp_path / "out"),
            "--model",
            "m",
            "--url",
            url,
            "--retries",
            "0",
        ]
    )
    assert code == 1 and f"no server at {url}" in capsys.readouterr().err


def test_killed_run_resumes_from_the_cache_without_asking_again(demo_dir, tmp_path):
    out, cache = tmp_path / "grown", tmp_path / "grown.llm-cache.jsonl"
    command = [sys.executable, "-m", "picovlm", "augment", str(demo_dir), "--out", str(out), "--model", "fake-model",
               "-n", "5", "--concurrency", "1"]  # fmt: skip
    with FakeLLMServer(delay=0.05) as server:
        command += ["--url", server.url]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not cache.exists() or cache.read_text().count("\n") < 10):
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        time.sleep(0.3)  # let the server finish the request that was in flight
        assert not out.exists()  # killed mid-way: nothing saved under the final name
        cached_prompts = {
            (json.loads(line)["key"]) for line in cache.read_text().splitlines() if line.strip()
        }
        asked_before = [(r["prompt"], r["seed"]) for r in server.requests]
        assert 10 <= len(cached_prompts) < 40

        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        asked_after = [(r["prompt"], r["seed"]) for r in server.requests[len(asked_before) :]]
    # 8 rows x 5 variants = 40 prompts; each asked once, except the one in flight when the process died
    assert len(set(asked_before) & set(asked_after)) <= 1
    assert len(set(asked_before) | set(asked_after)) == 40
    assert len(asked_after) == 40 - len(cached_prompts)
    assert "requests:" in result.stdout and f'"cache_hits": {len(cached_prompts)}' in result.stdout
