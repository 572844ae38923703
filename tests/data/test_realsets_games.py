"""The game-data real sets: Wesnoth unit sprites (wesnoth-1.16-data), Freeciv nation flags
(freeciv-data) and FreeOrion's item pictures (freeorion-data). The readers (WML, rulesets, content
scripts and stringtables), the text trimming and the builders are tested on small files written here,
so those parts run where the packages are absent; the builds from the packages ask for the
`wesnoth_data` / `freeciv_data` / `freeorion_data` fixtures, which FAIL with the apt line where a
package is missing.
"""

from __future__ import annotations

import io
import json
import random
import re
from collections import Counter, defaultdict

import pytest
from PIL import Image

from picovlm.cli import main
from picovlm.data.cauldron import load_cauldron_splits, rows_to_dataset, validate_schema
from picovlm.data.freeorion import (
    FREEORION_FIELDS,
    FREEORION_INSTALL,
    FREEORION_QUESTION,
    FREEORION_SOURCE,
    ICON_RENDERINGS,
    load_freeorion_items,
    make_freeorion_rows,
    read_stringtable,
    resolve_text,
    write_freeorion,
)
from picovlm.data.realsets import REAL_SETS
from picovlm.data.realsets_games import (
    FLAG_RENDERINGS,
    FREECIV_INSTALL,
    FREECIV_QUESTION,
    FREECIV_SOURCE,
    MAX_WORDS,
    MIN_WORDS,
    WESNOTH_INSTALL,
    WESNOTH_QUESTION,
    WESNOTH_SOURCE,
    clean_text,
    expand_brackets,
    expand_local_macros,
    load_freeciv_nations,
    load_wesnoth_units,
    make_freeciv_rows,
    make_wesnoth_rows,
    parse_ruleset,
    parse_wml,
    trim_text,
    write_freeciv_flags,
    write_wesnoth,
)
from picovlm.data.split import find_leaks
from picovlm.errors import PicovlmError
from picovlm.eval.facts import ValueMatcher, fact_parser_for
from picovlm.eval.metrics import field_accuracy, normalize_answer

# ---------------------------------------------------------------------------------------------------
# Readers and text, on inputs written here


def test_parse_wml_reads_attributes_translations_and_nesting():
    text = """#textdomain wesnoth-units
[unit_type]
    id=Spearman
    name= _ "Spearman"  # a comment
    description= _ "Swords are ""costly"" here.
Second line, with # not a comment." + {SPECIAL_NOTES} + _ " More."
    {DEFENSE_ANIM "units/a-defend.png" "units/a.png" {SOUND_LIST:HIT} }
    [attack]
        name=spear
    [/attack]
    level=1
[/unit_type]
"""
    unit = parse_wml(text).find_all("unit_type")[0]
    assert unit.attrs["name"] == "Spearman"
    assert unit.attrs["level"] == "1"
    assert unit.attrs["description"] == 'Swords are "costly" here.\nSecond line, with # not a comment. More.'
    assert [child.attrs for child in unit.children] == [{"name": "spear"}]


def test_local_macros_expand_with_arguments_and_one_line_bodies():
    text = """#define PATH_TEMP
units/dunefolk/herbalist/#enddef
#define STATS MOVES HP
    movement_type={MOVES}
    hitpoints={HP}
#enddef
[unit_type]
    image="{PATH_TEMP}alchemist.png"
    {STATS smallfoot 30}
    {CORE_MACRO 1}
[/unit_type]
"""
    unit = parse_wml(expand_local_macros(text)).find_all("unit_type")[0]
    assert unit.attrs == {
        "image": "units/dunefolk/herbalist/alchemist.png",
        "movement_type": "smallfoot",
        "hitpoints": "30",
    }


def test_expand_brackets_lists_ranges_and_repeats():
    assert expand_brackets("a-[1~3,5].png") == ["a-1.png", "a-2.png", "a-3.png", "a-5.png"]
    assert expand_brackets("a-[2~1].png") == ["a-2.png", "a-1.png"]
    assert expand_brackets("a-[ranged*2,x].png") == ["a-ranged.png", "a-x.png"]
    assert expand_brackets("plain.png") == ["plain.png"]


def test_parse_ruleset_reads_strings_lists_and_skips_tables():
    text = """[nation_roman]
name=_("Roman")
plural=_("?plural:Romans")
groups="Ancient", "European",
  "Core" ; a comment
legend=_("Rome was founded\\
 in legend; \\"by\\" Romulus.")
leaders = {
 "name", "sex"
 "Romulus", "Male"
}
flag = "rome"
style = "Classical"
"""
    nation = parse_ruleset(text)["nation_roman"]
    assert nation["name"] == "Roman" and nation["plural"] == "Romans"
    assert nation["groups"] == ["Ancient", "European", "Core"]
    assert nation["legend"] == 'Rome was founded in legend; "by" Romulus.'
    assert nation["flag"] == "rome" and nation["style"] == "Classical"


STRINGTABLE = """\ufeffEnglish

# a comment
METER_SHIELD
Shields

BLD_RADAR
Scanning Facility

NEEDS_YARD
Requires a shipyard.

TECH_RADAR_DESC
'''Unlocks the [[buildingtype BLD_RADAR]] building and raises [[metertype METER_SHIELD]] by %value%.

History:
Found in <i>ancient</i> ruins. [[NEEDS_YARD]] The [[tech UNKNOWN_KEY]] helps.'''

ON_ITS_OWN_LINE
'''
On a new line.
'''
"""


def test_read_stringtable_and_resolve_text():
    table = read_stringtable(STRINGTABLE)
    assert table["METER_SHIELD"] == "Shields" and table["BLD_RADAR"] == "Scanning Facility"
    assert table["ON_ITS_OWN_LINE"].strip() == "On a new line."
    assert "English" not in table and len(table) == 5
    # links become names (or the key in words), a macro its text; the heading, the sentence with the
    # game's %placeholder% and the markup go
    assert resolve_text(table["TECH_RADAR_DESC"], table) == (
        "Found in ancient ruins. Requires a shipyard. The unknown key helps."
    )
    assert resolve_text("Unlocks the [[buildingtype BLD_RADAR]] building.", table) == (
        "Unlocks the Scanning Facility building."
    )
    with pytest.raises(ValueError, match="never closed"):
        read_stringtable("KEY\n'''open\nand never closed\n")


def test_clean_text_and_trim_text():
    assert clean_text(
        "The <ref>dst='x' text='Great Ocean'</ref> \u2014 it\u2019s\n<header>text='A'</header>big."
    ) == ("The Great Ocean - it's big.")
    text = "One two three. Four five six seven, eight nine ten eleven. Twelve."
    assert trim_text(text, 8) == "One two three."  # whole sentences that fit
    assert trim_text(text, 8, at_least=5) == "One two three. Four five six seven..."  # cut at the comma
    assert trim_text(text, 2) == ""  # too little room for a piece of a sentence
    assert trim_text("One two three four five.", 4) == "One two three four..."  # the first does not fit
    assert trim_text(text, 50) == text


def test_value_matcher_tells_a_region_from_a_city_style_with_the_same_word():
    """Region and city style share values ("European"): the context words learnt from answers that
    state a value once decide which occurrence is which fact."""
    rows = [
        ({"region": r, "city style": s}, f"The flag of a {r} nation whose cities are built in {s} style.")
        for r, s in [("European", "European"), ("Asian", "Babylonian"), ("European", "Celtic"),
                     ("Asian", "Asian"), ("African", "European"), ("Asian", "Classical")]
    ]  # fmt: skip
    matcher = ValueMatcher(rows)
    for facts, answer in rows:
        assert matcher(answer) == {name: normalize_answer(v) for name, v in facts.items()}
    assert matcher("An Asian nation, cities built in European style.") == {
        "region": "asian",
        "city style": "european",
    }


# ---------------------------------------------------------------------------------------------------
# Both builders on small game folders written here


def _sprite(path, colour, size=(40, 50)):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGBA", (72, 72), (0, 0, 0, 0))
    image.paste(Image.new("RGBA", size, colour), (10, 10))
    image.paste(Image.new("RGBA", (8, 8), (0, 0, 0, 255)), (10, 10))  # a mark: the mirror differs
    image.save(path)


@pytest.fixture()
def small_wesnoth(tmp_path):
    """A data/core layout with two units: three sprites each, one frame that both units name."""
    core = tmp_path / "core"
    (core / "units" / "humans").mkdir(parents=True)
    (core / "units.cfg").write_text(
        '[units]\n[race]\n    id=human\n    male_name= _ "race^Human"\n[/race]\n'
        '[race]\n    id=lizard\n    male_name= _ "race^Saurian"\n[/race]\n[/units]\n'
    )
    (core / "team-colors.cfg").write_text("[color_palette]\n    magenta=F49AC1,EC008C\n[/color_palette]\n")
    for uid, race, stem, colour in [("Spearman", "human", "spear", (200, 60, 60, 255)),
                                    ("Skirmisher", "lizard", "skirm", (60, 160, 60, 255))]:  # fmt: skip
        (core / "units" / "humans" / f"{uid}.cfg").write_text(
            f'[unit_type]\n    id={uid}\n    name= _ "{uid}"\n    race={race}\n    image="units/x/{stem}.png"\n'
            f"    hitpoints=30\n    movement_type=smallfoot\n    level=1\n    alignment=lawful\n    cost=14\n"
            f'    description= _ "The {uid} fights on foot. It carries a spear and a shield, and it is '
            f'cheap to recruit for most armies."\n'
            f'    [defend]\n        image="units/x/{stem}-defend-[1~2].png:100"\n    [/defend]\n'
            f'    [attack_anim]\n        image="units/x/shared-frame.png"\n    [/attack_anim]\n[/unit_type]\n'
        )
        _sprite(core / "images" / "units" / "x" / f"{stem}.png", colour)
        for k, size in [(1, (44, 50)), (2, (40, 40))]:
            _sprite(core / "images" / "units" / "x" / f"{stem}-defend-{k}.png", colour, size)
    _sprite(core / "images" / "units" / "x" / "shared-frame.png", (0, 0, 255, 255))
    return core


def test_wesnoth_builder_on_a_small_folder(small_wesnoth):
    units = {unit.id: unit for unit in load_wesnoth_units(small_wesnoth)}
    assert sorted(units) == ["Skirmisher", "Spearman"]
    spearman = units["Spearman"]
    assert spearman.images == [
        "units/x/spear.png",
        "units/x/spear-defend-1.png",
        "units/x/spear-defend-2.png",
    ]
    assert units["Skirmisher"].race == "saurian"  # the race's display name, not its id ("lizard")
    rows = make_wesnoth_rows(n=100, source_dir=small_wesnoth)
    assert len(rows) == 6  # the shared frame belongs to neither unit
    assert Counter(row["group"] for row in rows) == {"wesnoth/Spearman": 3, "wesnoth/Skirmisher": 3}
    answer = rows[0]["texts"][0]["assistant"]
    assert "level 1" in answer and "smallfoot movement" in answer and "fights on foot" in answer
    image = Image.open(io.BytesIO(rows[0]["images"][0]["bytes"]))
    assert image.size == (112, 112) and image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)  # composited on white
    assert len(make_wesnoth_rows(n=4, source_dir=small_wesnoth)) == 4
    mirrored = make_wesnoth_rows(n=100, source_dir=small_wesnoth, mirror=True)
    assert len(mirrored) == 12 and len({row["group"] for row in mirrored}) == 2  # the mirror: same unit


def test_wesnoth_missing_folder_names_the_install_line(tmp_path):
    with pytest.raises(PicovlmError, match=WESNOTH_INSTALL):
        load_wesnoth_units(tmp_path)


@pytest.fixture()
def small_freeciv(tmp_path):
    """A Freeciv layout with three nations (one a barbarian, one without era groups) and their flags."""
    (tmp_path / "nation").mkdir()
    for nid, groups, flag, extra in [("roman", '"Ancient", "European", "Core"', "rome", ""),
                                     ("acadian", '"American"', "acadia", ""),
                                     ("pirate", '"Barbarian"', "pirate", 'barbarian_type = "Sea"\n')]:  # fmt: skip
        (tmp_path / "nation" / f"{nid}.ruleset").write_text(
            f'[nation_{nid}]\nname=_("{nid.title()}")\nplural=_("?plural:{nid.title()}s")\ngroups={groups}\n'
            f'legend=_("The {nid.title()}s had a long history.\\\n Their flag is famous.")\n'
            f'flag = "{flag}"\nflag_alt = "-"\nstyle = "Classical"\n{extra}'
        )
        for k, suffix in enumerate(FLAG_RENDERINGS):
            (tmp_path / "flags").mkdir(exist_ok=True)
            Image.new("RGBA", (29 + k, 20), (200, 30 * k, 0, 255)).save(
                tmp_path / "flags" / f"{flag}{suffix}.png"
            )
    return tmp_path


def test_freeciv_builder_on_a_small_folder(small_freeciv):
    nations = {nation.id: nation for nation in load_freeciv_nations(small_freeciv)}
    assert sorted(nations) == ["acadian", "roman"]  # the barbarian is not a playable nation
    assert nations["roman"].facts() == {"region": "european", "city style": "classical", "era": "ancient"}
    assert nations["acadian"].facts() == {"region": "american", "city style": "classical"}
    rows = make_freeciv_rows(n=100, source_dir=small_freeciv)
    assert len(rows) == 8 and Counter(row["group"] for row in rows) == {
        "freeciv-flags/rome": 4,
        "freeciv-flags/acadia": 4,
    }
    assert len({row["images"][0]["bytes"] for row in rows}) == 8
    answers = {row["group"]: row["texts"][0]["assistant"] for row in rows}
    assert answers["freeciv-flags/rome"].startswith(("The flag of the Romans, a European nation of the ancient era",
                                                     "This flag belongs to the Romans, a European nation of the ancient era"))  # fmt: skip
    assert answers["freeciv-flags/rome"].endswith("Their flag is famous.")
    with pytest.raises(PicovlmError, match="--mirror"):
        make_freeciv_rows(n=8, source_dir=small_freeciv, mirror=True)


def test_freeciv_missing_folder_names_the_install_line(tmp_path):
    with pytest.raises(PicovlmError, match=FREECIV_INSTALL):
        load_freeciv_nations(tmp_path)


FREEORION_SCRIPTS = {  # file under scripting/ -> (block, name key, picture, extra lines)
    "techs/growth/ECO.focs.txt": ("Tech", "GRO_ECO", 'graphic = "icons/tech/eco.png"',
                                  'category = "GROWTH_CATEGORY"\n    tags = [ "PEDIA_GROWTH_CATEGORY" ]'),
    "techs/growth/LOST.focs.txt": ("Tech", "GRO_LOST", 'graphic = "icons/tech/no-such-file.png"', ""),
    "species/SP_BLOB.focs.txt": ("Species", "SP_BLOB", 'graphic = "icons/species/blob.png"',
                                 'tags = [ "GOOD_INDUSTRY" "PEDIA_LITHIC_SPECIES_CLASS" ]'),
    "buildings/COL_BLOB.focs.txt": ("BuildingType", "BLD_COL_BLOB", 'icon = "icons/species/blob.png"', ""),
    "ship_hulls/organic/SH_ORG.focs.txt": ("Hull", "SH_ORG", 'icon = "icons/ship_hulls/org.png"\n'
                                           '    graphic = "hulls_design/org.png"', "speed = 75"),
    "ship_parts/Armour/AR_STD.focs.txt": ("Part", "AR_STD", 'icon = "icons/ship_parts/plate.png"', "class = Armour"),
    "specials/DUST.focs.txt": ("Special", "DUST", 'graphic = "icons/specials_huge/dust.png"', ""),
}  # fmt: skip
LONG_TEXT = (
    "It was found long ago by travellers. Its makers are unknown, and its purpose is still debated today."
)


@pytest.fixture()
def small_freeorion(tmp_path):
    """A FreeOrion `default` folder with one item of each kind: a tech whose picture is missing, a
    colony building that names its species' portrait, and a special described too briefly to use."""
    root = tmp_path / "default"
    table = ["GROWTH_CATEGORY\nGrowth\n"]
    for k, (file, (block, key, picture, extra)) in enumerate(FREEORION_SCRIPTS.items()):
        path = root / "scripting" / file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f'{block}\n    name = "{key}"\n    description = "{key}_DESC"\n    {extra}\n    {picture}\n'
                        '\n#include "/scripting/common/base_prod.macros"\n')  # fmt: skip
        description = "Tiny." if key == "DUST" else f"The {key.lower()} item. {LONG_TEXT}"
        table.append(f"{key}\n{key.title().replace('_', ' ')}\n\n{key}_DESC\n'''{description}'''\n")
        icon = re.search(r'"(icons/[^"]+)"', picture).group(1)
        if "no-such-file" not in icon and not (root / "data" / "art" / icon).exists():
            (root / "data" / "art" / icon).parent.mkdir(parents=True, exist_ok=True)
            Image.new("LA" if "species" in icon else "RGBA", (64, 48), (40 * k, 255) if "species" in icon
                      else (40 * k, 90, 200, 255)).save(root / "data" / "art" / icon)  # fmt: skip
    (root / "stringtables").mkdir()
    (root / "stringtables" / "en.txt").write_text("\n".join(table), encoding="utf-8")
    return root


def test_freeorion_builder_on_a_small_folder(small_freeorion):
    items = {item.key: item for item in load_freeorion_items(small_freeorion)}
    # the missing picture drops its tech; the portrait stays with the species, not its colony building
    assert sorted(items) == ["AR_STD", "DUST", "GRO_ECO", "SH_ORG", "SP_BLOB"]
    assert items["GRO_ECO"].facts() == {"kind": "technology", "category": "growth"}
    assert items["SP_BLOB"].facts() == {"kind": "species", "category": "lithic"}
    assert items["SH_ORG"].facts() == {"kind": "ship hull", "category": "organic"}
    assert items["SH_ORG"].picture == "icons/ship_hulls/org.png"  # the icon, not the design drawing
    assert items["AR_STD"].facts() == {"kind": "ship part", "category": "armour"}
    assert items["DUST"].facts() == {"kind": "special"}
    rows = make_freeorion_rows(n=100, source_dir=small_freeorion)
    # four renderings of each item; the special's answer is under 10 words, so it gives none
    assert len(rows) == 16 and set(Counter(row["group"] for row in rows).values()) == {len(ICON_RENDERINGS)}
    assert "freeorion/DUST" not in {row["group"] for row in rows}
    assert len({row["images"][0]["bytes"] for row in rows}) == 16
    answers = {row["group"]: row["texts"][0]["assistant"] for row in rows}
    assert answers["freeorion/GRO_ECO"].startswith(("Gro Eco is a growth technology. The gro_eco item.",
                                                    "This is Gro Eco, a growth technology. The gro_eco item."))  # fmt: skip
    assert "an armour ship part" in answers["freeorion/AR_STD"]
    image = Image.open(io.BytesIO(rows[0]["images"][0]["bytes"]))
    assert image.size == (112, 112) and image.mode == "RGB" and image.getpixel((0, 0)) == (255, 255, 255)
    assert len(make_freeorion_rows(n=6, source_dir=small_freeorion)) == 6
    with pytest.raises(PicovlmError, match="--mirror"):
        make_freeorion_rows(n=8, source_dir=small_freeorion, mirror=True)


def test_freeorion_missing_folder_names_the_install_line(tmp_path, small_freeorion):
    with pytest.raises(PicovlmError, match=FREEORION_INSTALL):
        load_freeorion_items(tmp_path / "nothing")
    (small_freeorion / "stringtables" / "en.txt").write_text("KEY\n'''never closed\n")
    with pytest.raises(PicovlmError, match=r"en\.txt: not readable as a stringtable .*never closed"):
        load_freeorion_items(small_freeorion)


# ---------------------------------------------------------------------------------------------------
# Builds from the Debian packages


def check_built_set(
    out, n_rows: int, question: str, source: str, fields: set[str], optional: frozenset = frozenset({"era"})
) -> dict:
    """What every built set must satisfy (each row states every fact of `fields` but the `optional`
    ones); returns its splits."""
    splits = load_cauldron_splits(out)
    assert sorted(splits) == ["test", "train", "validation"]
    assert sum(len(split) for split in splits.values()) == n_rows
    assert all(len(split) for split in splits.values())
    assert find_leaks(splits) == {"image": 0, "group": 0}
    groups = [set(split["group"]) for split in splits.values()]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    for split in splits.values():
        validate_schema(split, out)
        for row in split:
            (turn,) = row["texts"]
            assert turn["user"] == question and turn["source"] == source
            assert MIN_WORDS <= len(turn["assistant"].split()) <= MAX_WORDS
            facts = json.loads(row["fields"])
            assert fields >= set(facts) >= fields - optional
            assert all(isinstance(v, str) and v for v in facts.values())
    image = splits["train"][0]["images"][0]  # decoded by the dataset's Image feature
    assert image.size == (112, 112) and image.mode == "RGB"
    return splits


def check_field_accuracy(rows: list[dict], exact_share: float) -> None:
    """The reader evaluation picks for these rows reads each reference answer back to its fields; the
    references score field accuracy 1.0 against themselves and far less against shuffled answers."""
    dataset = rows_to_dataset(rows)
    parser = fact_parser_for(dataset)
    assert isinstance(parser, ValueMatcher)  # no set-specific parser: the generic path for any data
    exact = 0
    for row in rows:
        facts = json.loads(row["fields"])
        read = parser(row["texts"][0]["assistant"])
        exact += all(read[name] == normalize_answer(value) for name, value in facts.items())
    assert exact / len(rows) >= exact_share
    references = [row["texts"][0]["assistant"] for row in rows]
    assert field_accuracy(references, references, parser)["all"] == 1.0
    shuffled = references[:]
    random.Random(0).shuffle(shuffled)
    assert field_accuracy(shuffled, references, parser)["all"] < 0.5


@pytest.mark.usefixtures("wesnoth_data")
def test_wesnoth_units_from_the_package():
    units = {unit.id: unit for unit in load_wesnoth_units()}
    assert len(units) >= 250
    spearman = units["Spearman"]
    assert spearman.facts() == {
        "race": "human",
        "alignment": "lawful",
        "level": "1",
        "movement type": "smallfoot",
    }
    assert spearman.description.startswith("Swords are, for many, an expensive luxury")
    assert spearman.images[0] == "units/human-loyalists/spearman.png" and len(spearman.images) > 10
    assert units["Saurian Skirmisher"].race == "saurian"
    owners = defaultdict(set)
    for unit in units.values():
        for image in unit.images:
            owners[image].add(unit.id)
    assert all(len(ids) == 1 for ids in owners.values())  # no sprite in two units (two groups)


@pytest.mark.usefixtures("wesnoth_data")
def test_wesnoth_small_build(tmp_path):
    write_wesnoth(tmp_path / "wesnoth", n=150, seed=1)
    splits = check_built_set(tmp_path / "wesnoth", 150, WESNOTH_QUESTION, WESNOTH_SOURCE,
                             {"race", "alignment", "level", "movement type"})  # fmt: skip
    rows_by_group = Counter(g for split in splits.values() for g in split["group"])
    assert 9 <= len(rows_by_group) <= 40  # a few units with several sprites each
    for split in splits.values():
        for row in split:
            unit = row["group"].removeprefix("wesnoth/")
            assert unit.lower() in row["texts"][0]["assistant"].lower() or unit.startswith("Dune")


@pytest.mark.usefixtures("wesnoth_data")
def test_wesnoth_field_accuracy():
    check_field_accuracy(make_wesnoth_rows(n=600, seed=0), exact_share=1.0)


@pytest.mark.usefixtures("freeciv_data")
def test_freeciv_nations_from_the_package():
    nations = {nation.id: nation for nation in load_freeciv_nations()}
    assert len(nations) >= 500
    assert nations["roman"].facts() == {"region": "european", "city style": "classical", "era": "ancient"}
    assert nations["roman"].legend.startswith("Rome was, in legend, founded by Romulus in 753 BCE.")
    assert "barbarian" not in nations and "animals" not in nations
    assert len({nation.flag for nation in nations.values()}) == len(nations)


@pytest.mark.usefixtures("freeciv_data")
def test_freeciv_small_build(tmp_path):
    write_freeciv_flags(tmp_path / "flags", n=120, seed=0)
    splits = check_built_set(tmp_path / "flags", 120, FREECIV_QUESTION, FREECIV_SOURCE,
                             {"era", "region", "city style"})  # fmt: skip
    rows_by_group = Counter(g for split in splits.values() for g in split["group"])
    assert len(rows_by_group) == 30 and set(rows_by_group.values()) == {4}


@pytest.mark.usefixtures("freeciv_data")
def test_freeciv_field_accuracy():
    # a nation without an era group can mention one in its legend ("modern Azerbaijan"): a few rows
    check_field_accuracy(make_freeciv_rows(n=800, seed=0), exact_share=0.98)


@pytest.mark.usefixtures("freeorion_data")
def test_freeorion_items_from_the_package():
    items = {item.key: item for item in load_freeorion_items()}
    assert len(items) >= 300
    assert Counter(item.kind for item in items.values()).keys() == {
        "technology", "building", "ship hull", "ship part", "species", "special"
    }  # fmt: skip
    ecology = items["GRO_PLANET_ECOL"]
    assert ecology.name == "Planetary Ecology" and ecology.facts() == {
        "kind": "technology",
        "category": "growth",
    }
    assert items["SP_ABADDONI"].facts() == {"kind": "species", "category": "lithic"}
    assert items["SP_ABADDONI"].description.startswith("Abaddoni are shaped like a chicken egg")
    assert items["AR_STD_PLATE"].facts() == {"kind": "ship part", "category": "armour"}
    assert len({item.picture for item in items.values()}) == len(items)  # one picture, one answer
    texts = " ".join(item.description for item in items.values())
    assert "[[" not in texts and "<i>" not in texts and "Description:" not in texts


@pytest.mark.usefixtures("freeorion_data")
def test_freeorion_small_build(tmp_path):
    write_freeorion(tmp_path / "freeorion", n=120, seed=0)
    splits = check_built_set(tmp_path / "freeorion", 120, FREEORION_QUESTION, FREEORION_SOURCE,
                             set(FREEORION_FIELDS), optional=frozenset({"category"}))  # fmt: skip
    rows_by_group = Counter(g for split in splits.values() for g in split["group"])
    assert len(rows_by_group) == 30 and set(rows_by_group.values()) == {4}


@pytest.mark.usefixtures("freeorion_data")
def test_freeorion_field_accuracy():
    # an item's name can hold another category's word ("Organic Structures, a construction technology")
    check_field_accuracy(make_freeorion_rows(n=800, seed=0), exact_share=0.98)


@pytest.mark.usefixtures("wesnoth_data", "freeciv_data", "freeorion_data")
def test_realset_cli_builds_the_game_sets(tmp_path, capsys):
    assert {"wesnoth", "freeciv-flags", "freeorion"} <= set(REAL_SETS)
    assert main(["realset", "wesnoth", "--out", str(tmp_path / "w"), "--n", "40"]) == 0
    assert main(["realset", "freeciv-flags", "--out", str(tmp_path / "f"), "--n", "40"]) == 0
    assert main(["realset", "freeorion", "--out", str(tmp_path / "o"), "--n", "40"]) == 0
    out = capsys.readouterr().out
    assert "rows of wesnoth (" in out and " to " in out
    assert "wrote 40 rows of freeciv-flags (10 groups)" in out
    assert "wrote 40 rows of freeorion (10 groups)" in out
