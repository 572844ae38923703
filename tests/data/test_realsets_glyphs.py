"""The glyph real sets: emoji (Noto Color Emoji + Unicode emoji-test + CLDR keywords) and cjk (three CJK
typefaces + Unihan). The drawing, the text parsers and the answers are tested on small inputs written
here; building the sets needs the Debian packages (the fixtures fail with the apt line without them)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from picovlm.cli import main
from picovlm.data import cjk as cjk_set
from picovlm.data import emoji as emoji_set
from picovlm.data.cauldron import load_cauldron_splits, validate_schema
from picovlm.data.cjk import (
    CJK_FONTS,
    Character,
    character_answer,
    first_sense,
    make_cjk_rows,
    radical_names,
    read_unihan,
)
from picovlm.data.emoji import (
    EMOJI_CANVAS,
    EMOJI_FONT,
    Emoji,
    answer_keywords,
    base_emoji,
    emoji_answer,
    load_emoji,
    read_emoji_test,
)
from picovlm.data.glyphs import FontFile, GlyphFont
from picovlm.data.split import find_leaks
from picovlm.errors import DataError, PicovlmError
from picovlm.eval.facts import ValueMatcher, fact_parser_for
from picovlm.eval.metrics import field_accuracy, flatten_fields

needs_emoji = pytest.mark.usefixtures("emoji_sources")
needs_cjk = pytest.mark.usefixtures("cjk_sources")


def ink_box(picture: Image.Image) -> tuple[int, int, int, int] | None:
    """Bounding box of the non-white pixels."""
    pixels = np.asarray(picture.convert("L"))
    rows, cols = np.nonzero((pixels < 250).any(axis=1))[0], np.nonzero((pixels < 250).any(axis=0))[0]
    return (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1) if len(rows) else None


def words(text: str) -> int:
    return len(text.split())


# --- Drawing -----------------------------------------------------------------------------------------


@needs_emoji
def test_an_emoji_is_drawn_in_colour_centred_on_white_and_sequences_join_or_are_refused():
    font = GlyphFont(EMOJI_FONT, EMOJI_CANVAS)
    picture = font.draw("\U0001f600")  # grinning face
    assert picture.size == (EMOJI_CANVAS, EMOJI_CANVAS) and picture.mode == "RGB"
    assert picture.getpixel((0, 0)) == (255, 255, 255)
    left, top, right, bottom = ink_box(picture)
    assert abs((left + right) / 2 - EMOJI_CANVAS / 2) <= 2 and abs((top + bottom) / 2 - EMOJI_CANVAS / 2) <= 2
    red, green, blue = np.asarray(picture).reshape(-1, 3).astype(int).T
    assert ((red - blue) > 100).mean() > 0.2  # a yellow face, not a black outline
    thumbs, dark_thumbs = font.draw("\U0001f44d"), font.draw("\U0001f44d\U0001f3ff")  # skin tone joined
    assert dark_thumbs is not None and np.asarray(dark_thumbs).mean() < np.asarray(thumbs).mean()
    assert font.draw("\U0001f600\U0001f600") is None  # two emoji are two glyphs: not one picture
    assert font.draw("A") is None  # the emoji font has no letters
    assert font.draw("\U0010fffd") is None


@needs_cjk
def test_each_typeface_draws_a_character_black_on_white_and_refuses_one_it_lacks():
    pictures = []
    for spec in CJK_FONTS:
        font = GlyphFont(spec, 112)
        picture = font.draw("水")
        assert picture.size == (112, 112)
        left, top, right, bottom = ink_box(picture)
        assert 50 < right - left <= 100 and 50 < bottom - top <= 100  # a margin of white around it
        assert np.asarray(picture).min() < 30  # black ink
        assert font.draw("\U0010fffd") is None  # the "missing glyph" box is not a character
        assert font.draw("\U00031350") is None  # CJK Extension H: in none of the three
        pictures.append(np.asarray(picture))
    assert all((a != b).any() for k, a in enumerate(pictures) for b in pictures[k + 1 :])  # three typefaces


def test_a_missing_font_names_its_package(tmp_path):
    spec = FontFile("Nowhere Sans", tmp_path / "nowhere.ttf", "apt-get install fonts-nowhere", 64)
    with pytest.raises(PicovlmError, match="apt-get install fonts-nowhere"):
        GlyphFont(spec, 64)


# --- Emoji: the text ---------------------------------------------------------------------------------


def test_variants_share_their_base_emoji():
    thumbs = "\U0001f44d"
    assert base_emoji(thumbs + "\U0001f3fd") == thumbs  # skin tone
    technologist = "\U0001f9d1\u200d\U0001f4bb"
    assert base_emoji("\U0001f469\u200d\U0001f4bb") == technologist  # woman technologist
    assert base_emoji("\U0001f468\U0001f3ff\u200d\U0001f4bb") == technologist  # man, dark skin tone
    gesturing = "\U0001f645"
    assert base_emoji(gesturing + "\u200d\u2642\ufe0f") == gesturing  # man gesturing NO
    assert base_emoji("\u2764\ufe0f") == "\u2764"  # red heart: only the variation selector goes
    assert base_emoji("\U0001f1ef\U0001f1f5") != base_emoji("\U0001f1eb\U0001f1f7")  # Japan, France


def test_emoji_test_lines_are_read_with_their_group_and_subgroup(tmp_path):
    path = tmp_path / "emoji-test.txt"
    path.write_text(
        "# group: Smileys & Emotion\n# subgroup: face-smiling\n"
        "1F600                                                  ; fully-qualified     # 😀 E1.0 grinning face\n"
        "263A                                                   ; unqualified         # ☺ E0.6 smiling face\n"
        "# group: People & Body\n# subgroup: hand-fingers-closed\n"
        "1F44D 1F3FD                                            ; fully-qualified     # 👍🏽 E1.0 thumbs up: medium skin tone\n",
        encoding="utf-8",
    )
    assert read_emoji_test(path) == [
        ("\U0001f600", "grinning face", "Smileys & Emotion", "face-smiling"),
        ("\U0001f44d\U0001f3fd", "thumbs up: medium skin tone", "People & Body", "hand-fingers-closed"),
    ]
    path.write_text("1F600 ; fully-qualified # 😀 E1.0 grinning face\n", encoding="utf-8")  # no group yet
    with pytest.raises(DataError, match="emoji-test.txt:1"):
        read_emoji_test(path)
    with pytest.raises(PicovlmError, match="apt-get install fonts-noto-color-emoji unicode-data"):
        read_emoji_test(tmp_path / "absent.txt")


def test_keywords_leave_out_what_the_name_says_and_answers_stay_within_47_words():
    cldr = ["+1", "hand", "medium skin tone", "thumb", "thumbs up", "up"]
    assert answer_keywords("thumbs up: medium skin tone", cldr) == ["+1", "hand", "thumb", "up"]
    assert answer_keywords("flag: Japan", ["flag"]) == ["flag"]  # never none at all
    emoji = Emoji(
        "x", "grinning face with big eyes", "smileys and emotion", "face-smiling", ("face", "mouth")
    )
    assert emoji_answer(emoji, 0) == (
        "This is the emoji 'grinning face with big eyes', in the group smileys and emotion, subgroup "
        "face-smiling. Keywords: face, mouth."
    )
    wordy = Emoji("x", "woman and man holding hands: light skin tone, medium skin tone", "people and body",
                  "family", tuple(f"long keyword {k}" for k in range(8)))  # fmt: skip
    for template in range(len(emoji_set.TEMPLATES)):
        answer = emoji_answer(wordy, template)
        assert 13 <= words(answer) <= 47 and "long keyword 0" in answer


# --- CJK: the text -----------------------------------------------------------------------------------


def test_first_sense_keeps_the_first_meaning_and_drops_notes():
    assert first_sense("one; a, an; alone") == "one"
    assert first_sense("water, liquid, lotion, juice") == "water, liquid, lotion, juice"
    assert first_sense("(Cant.) to wear; manifest") == "manifest"
    assert first_sense("Kangxi radical 166; unit of distance") == "unit of distance"
    long = first_sense("a b c, d e f, g h i, j k l")
    assert long == "a b c, d e f" and words(long) <= 8
    assert first_sense("(Cant.) only Cantonese") == ""


def test_unihan_files_are_read_by_key(tmp_path):
    path = tmp_path / "Unihan_Readings.txt"
    path.write_text(
        "# comment\nU+6C34\tkDefinition\twater, liquid\nU+6C34\tkMandarin\tshuǐ\nU+6C34\tkKorean\tSWU\n",
        encoding="utf-8",
    )
    assert read_unihan(path, {"kDefinition", "kMandarin"}) == {
        "水": {"kDefinition": "water, liquid", "kMandarin": "shuǐ"}
    }
    path.write_text("U+6C34 kDefinition water\n", encoding="utf-8")  # spaces, not tabs
    with pytest.raises(DataError, match="Unihan_Readings.txt:1"):
        read_unihan(path, {"kDefinition"})
    with pytest.raises(PicovlmError, match="apt-get install fonts-noto-cjk fonts-wqy-microhei unicode-data"):
        read_unihan(tmp_path / "absent.txt.bz2", {"kDefinition"})


@needs_cjk
def test_the_214_radicals_are_named_from_unicode_data():
    names = radical_names()
    assert len(names) == 214
    assert (names["1"], names["85"], names["149"], names["214"]) == ("one", "water", "speech", "flute")


def test_cjk_answers_state_the_facts_in_both_templates():
    water = Character("水", "water, liquid, lotion, juice", "shuǐ", "85", "water", "4", 2819)
    assert character_answer(water, 0) == (
        "The character 水 means 'water, liquid, lotion, juice'. Its Mandarin reading is shuǐ. Its stroke "
        "count is 4 and it is listed under radical 85, the water radical."
    )
    for template in range(len(cjk_set.TEMPLATES)):
        answer = character_answer(water, template)
        assert all(fact in answer for fact in ("水", "shuǐ", "radical 85", "water radical", "4"))
        assert 10 <= words(answer) <= 50


# --- Building the sets -------------------------------------------------------------------------------


def check_built_set(out, rows: int, groups: int, source: str, min_words: int, max_words: int):
    """The saved set: row and group counts, group-disjoint splits, schema, pictures, answer lengths, and
    the facts a ValueMatcher reads from each reference equal the row's `fields`."""
    splits = load_cauldron_splits(out)
    assert sorted(splits) == ["test", "train", "validation"]
    assert sum(len(split) for split in splits.values()) == rows
    assert find_leaks(splits) == {"image": 0, "group": 0}
    by_split = {name: set(split["group"]) for name, split in splits.items()}
    assert sum(len(g) for g in by_split.values()) == len(set().union(*by_split.values())) == groups
    assert len(splits["train"]) >= 0.7 * rows and len(splits["test"]) >= 1
    for name, split in splits.items():
        validate_schema(split, f"{out}/{name}")
        picture = split[0]["images"][0]  # decoded by the datasets Image feature
        assert picture.size == (112, 112) and picture.mode == "RGB"
    every = [row for split in splits.values() for row in split]
    answers = [row["texts"][0]["assistant"] for row in every]
    assert {row["texts"][0]["source"] for row in every} == {source}
    assert all(min_words <= words(a) <= max_words for a in answers)
    facts = [json.loads(row["fields"]) for row in every]
    reader = ValueMatcher(zip(facts, answers))
    assert [flatten_fields(reader(a)) for a in answers] == [flatten_fields(f) for f in facts]
    return splits


@needs_emoji
def test_realset_emoji_builds_a_grouped_split_set(tmp_path, capsys):
    out = tmp_path / "emoji"
    assert main(["realset", "emoji", "--out", str(out), "--n", "120", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 120 rows of emoji" in printed and "train" in printed
    splits = load_cauldron_splits(out)
    groups = len({g for split in splits.values() for g in split["group"]})
    check_built_set(out, 120, groups, "emoji", 13, 47)
    fields = [json.loads(f) for split in splits.values() for f in split["fields"]]
    assert all(set(f) == {"group", "subgroup"} for f in fields)
    assert len({f["group"] for f in fields}) >= 5  # a sample across the whole file, not its first lines
    answers = [t[0]["assistant"] for split in splits.values() for t in split["texts"]]
    assert {a.split()[0] for a in answers} == {"This", "The"}  # both templates
    assert main(["realset", "emoji", "--out", str(out), "--n", "5", "--mirror", "--overwrite"]) == 1
    assert "--mirror does not apply" in capsys.readouterr().err


@needs_emoji
def test_every_fully_qualified_emoji_with_keywords_is_an_item_and_variants_share_a_group():
    found = load_emoji()
    assert 3500 <= len(found) <= 3700  # skin tones and genders included; CLDR 41 lacks 31 of Emoji 15.0
    by_base = Counter(base_emoji(e.text) for e in found)
    assert by_base["\U0001f44d"] == 6  # thumbs up and its five skin tones
    assert by_base["\U0001f9d1\u200d\U0001f4bb"] == 18  # technologist: person, man, woman x 6 tones
    assert {e.group for e in found} == {
        "smileys and emotion", "people and body", "animals and nature", "food and drink", "travel and places",
        "activities", "objects", "symbols", "flags",
    }  # fmt: skip


@needs_cjk
def test_realset_cjk_builds_three_typefaces_per_character(tmp_path, capsys):
    out = tmp_path / "cjk"
    assert main(["realset", "cjk", "--out", str(out), "--n", "40"]) == 0
    assert "wrote 120 rows of cjk" in capsys.readouterr().out
    splits = check_built_set(out, 120, 40, "cjk", 10, 50)
    for split in splits.values():
        per_char = Counter(split["group"])
        assert set(per_char.values()) == {3}  # every typeface of a character in the same split
        facts = {json.loads(f)["radical"] for f in split["fields"]}
        assert facts and all(f.isdigit() for f in facts)
    first = splits["train"][0]
    assert set(json.loads(first["fields"])) == {"radical", "radical meaning", "strokes"}


@needs_cjk
def test_cjk_takes_the_most_frequent_characters_first():
    rows = make_cjk_rows(n=5)
    chars = [row["texts"][0]["assistant"].split()[2].strip(",") for row in rows[::3]]
    assert "的" in chars and "一" in chars  # the two most frequent in kHanyuPinlu
    with pytest.raises(PicovlmError, match="--n"):
        make_cjk_rows(n=100_000)


@needs_emoji
@needs_cjk
@pytest.mark.parametrize("name,n", [("emoji", 400), ("cjk", 150)])
def test_field_accuracy_of_the_references_is_1_and_a_wrong_answer_scores_less(tmp_path, name, n):
    """What `picovlm eval` does: a fact reader learned from the test and train splits' fields (these sets
    register no parser), then field accuracy of answers against the references."""
    out = tmp_path / name
    assert main(["realset", name, "--out", str(out), "--n", str(n)]) == 0
    splits = load_cauldron_splits(out)
    reader = fact_parser_for(splits["test"], splits["train"])
    assert isinstance(reader, ValueMatcher)
    references = [texts[0]["assistant"] for texts in splits["test"]["texts"]]
    assert field_accuracy(references, references, reader)["all"] == 1.0
    for answer, stored in zip(references, splits["test"]["fields"]):
        assert flatten_fields(reader(answer)) == flatten_fields(json.loads(stored))
    half = len(references) // 2  # each test item answered with the reference of one far from it
    shifted = references[half:] + references[:half]
    assert field_accuracy(shifted, references, reader)["all"] < 0.8
