"""`picovlm data import`: raw files or other datasets -> a cauldron-schema dataset.

From a folder of images plus a table (CSV or JSONL), one row per item:

    image,question,answer,group            # CSV header; question and group are optional columns
    cat.jpg,What is this?,A cat on a mat.,orig-17
    a.png;b.png,,Two pictures of a dog.,   # several images: separated by ';' (in JSONL: a list)

In JSONL a row may also hold a whole conversation, {"images": [...], "texts": [{"user", "assistant"}]},
or lists in the question/answer columns: multi-turn rows are kept. Image paths are relative to the
images folder (or absolute). An empty question takes the default question. Rows whose image file is
missing or whose answer is empty are skipped, counted and reported with their row number (the line
number in the file); they never stop the import. Image bytes are stored as they are, not re-encoded.

Every other column of the table (`category`, `colour`, ...) is kept as the row's facts, JSON in the
`fields` column (a JSONL row may also give a `fields` object), so field accuracy, the verdict and
`train.best_metric=gen_field_accuracy` work on the imported data: picovlm/eval/facts.py reads the facts
back out of generated answers by their values (a ValueMatcher), the reader of any source that registered
no parser of its own, so imported rows need no registration whatever their `source`.

From another dataset (Hub id + subset, parquet, save_to_disk folder): `import_dataset` loads it with
load_cauldron (streaming and a row cap for large subsets) and saves a local copy.
"""

from __future__ import annotations

import csv
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from picovlm.config import DEFAULT_QUESTION
from picovlm.data.cauldron import cauldron_features, load_cauldron, materialize, save_cauldron
from picovlm.errors import DataError
from picovlm.utils import ProgressFn, no_progress


@dataclass
class ImportReport:
    rows_read: int = 0
    rows_written: int = 0
    skipped: list[dict] = field(default_factory=list)  # {"row": line number, "reason": str}

    def skip(self, row: int, reason: str) -> None:
        self.skipped.append({"row": row, "reason": reason})


def _read_table(table: Path) -> list[tuple[int, dict]]:
    """(line number, row dict) for every data row of a CSV or JSONL file."""
    if not table.exists():
        raise DataError(f"{table}: file not found")
    suffix = table.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        rows = []
        for line_number, line in enumerate(table.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((line_number, json.loads(line)))
            except json.JSONDecodeError as err:
                rows.append((line_number, {"__error__": f"invalid JSON: {err}"}))
        return rows
    if suffix in (".csv", ".tsv"):
        with table.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
            # the header is line 1, so data row k is line k + 1 (ignoring quoted newlines)
            return [(reader.line_num, dict(row)) for row in reader]
    raise DataError(f"{table}: unknown table format {suffix!r}: use .csv, .tsv or .jsonl")


def _as_list(value, separator: str = ";") -> list:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        return (
            [part.strip() for part in value.split(separator) if part.strip()]
            if separator in value
            else [value]
        )
    return [value]


def import_folder(
    images_dir: str | Path,
    table: str | Path,
    default_question: str = DEFAULT_QUESTION,
    source: str | None = None,
    image_column: str = "image",
    question_column: str = "question",
    answer_column: str = "answer",
    group_column: str = "group",
    fact_columns: list[str] | None = None,
    progress: ProgressFn = no_progress,
):
    """Read images_dir + table into a cauldron-schema Dataset. Returns (dataset, ImportReport).

    fact_columns: the table columns kept as facts in `fields`; None keeps every column that is not the
    image, question, answer, group or source, [] keeps none."""
    from datasets import Dataset

    images_dir, table = Path(images_dir), Path(table)
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: images folder not found")
    source = source or f"import:{table.name}"
    columns: dict[str, list] = {"images": [], "texts": [], "group": [], "fields": []}
    report = ImportReport()
    table_rows = _read_table(table)
    if fact_columns is None:
        not_facts = {image_column, question_column, answer_column, group_column, "images", "texts", "source",
                     "fields", "__error__"}  # fmt: skip
        fact_columns = list(dict.fromkeys(k for _, row in table_rows for k in row if k not in not_facts))
    for line_number, row in table_rows:
        report.rows_read += 1
        progress(report.rows_read, len(table_rows), "importing rows")
        if "__error__" in row:
            report.skip(line_number, row["__error__"])
            continue
        image_names = _as_list(row.get(image_column) if image_column in row else row.get("images"))
        if not image_names:
            report.skip(line_number, f"no image in column {image_column!r}")
            continue
        image_paths = [
            Path(name) if Path(name).is_absolute() else images_dir / name for name in map(str, image_names)
        ]
        missing = [str(p) for p in image_paths if not p.is_file()]
        if missing:
            report.skip(line_number, f"image file not found: {', '.join(missing)}")
            continue
        turns = _row_turns(row, question_column, answer_column, default_question, source)
        problem = next((t["__error__"] for t in turns if "__error__" in t), None)
        if problem or not turns:
            report.skip(line_number, problem or f"empty answer in column {answer_column!r}")
            continue
        columns["images"].append([{"bytes": p.read_bytes(), "path": p.name} for p in image_paths])
        columns["texts"].append(turns)
        group = row.get(group_column)
        columns["group"].append("" if group is None else str(group))
        facts = row["fields"] if isinstance(row.get("fields"), dict) else {}
        facts = {**facts, **facts_from_columns(row, fact_columns)}
        columns["fields"].append(json.dumps(facts, ensure_ascii=False, sort_keys=True) if facts else "")
        report.rows_written += 1
    has_facts = any(columns["fields"])
    if not has_facts:
        del columns["fields"]
    dataset = Dataset.from_dict(columns, features=cauldron_features(group=True, fields=has_facts))
    return dataset, report


def facts_from_columns(row: dict, columns: list[str]) -> dict[str, str]:
    """The extra table columns of an imported row as its facts (empty cells left out)."""
    facts = {}
    for column in columns:
        value = row.get(column)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        facts[column] = value.strip() if isinstance(value, str) else str(value)
    return facts


def _row_turns(
    row: dict, question_column: str, answer_column: str, default_question: str, source: str
) -> list[dict]:
    """The row's conversation as [{"user", "assistant", "source"}]; an error turn if it is unusable."""
    if isinstance(row.get("texts"), list):  # a JSONL row holding a whole conversation
        pairs = [(turn.get("user"), turn.get("assistant"), turn.get("source")) for turn in row["texts"]]
    else:
        answers = _as_list(row.get(answer_column), separator="\x00")  # lists only: ';' is fine in prose
        questions = _as_list(row.get(question_column), separator="\x00") or [None] * len(answers)
        if len(questions) != len(answers):
            return [{"__error__": f"{len(questions)} questions but {len(answers)} answers"}]
        pairs = [(q, a, row.get("source")) for q, a in zip(questions, answers)]
    turns = []
    for turn_number, (question, answer, turn_source) in enumerate(pairs, start=1):
        if not isinstance(answer, str) or not answer.strip():
            return [{"__error__": f"empty or non-text answer in turn {turn_number}"}]
        question = question if isinstance(question, str) and question.strip() else default_question
        turns.append(
            {"user": question.strip(), "assistant": answer.strip(), "source": str(turn_source or source)}
        )
    return turns


def import_dataset(
    source: str,
    out_dir: str | Path,
    subset: str | None = None,
    split: str | None = None,
    streaming: bool = False,
    max_rows: int | None = None,
    source_name: str | None = None,
    overwrite: bool = False,
    parquet: bool = False,
    num_shards: int = 1,
) -> int:
    """Copy a cauldron-schema dataset from the Hub, parquet or a save_to_disk folder to out_dir and
    return its number of rows. Turns with an empty `source` get source_name (default: id/subset)."""
    dataset = materialize(
        load_cauldron(source, subset=subset, split=split, streaming=streaming, max_rows=max_rows)
    )
    name = source_name or (f"{source}/{subset}" if subset else str(source))

    def fill_source(texts: list[dict]) -> dict:
        return {"texts": [{**turn, "source": turn.get("source") or name} for turn in texts]}

    with tempfile.TemporaryDirectory(prefix="picovlm-import-") as tmp:
        # an explicit cache file: `map` must not write next to the input's own Arrow files
        dataset = dataset.map(
            fill_source, input_columns="texts", cache_file_name=str(Path(tmp) / "import.arrow")
        )
        save_cauldron(dataset, out_dir, overwrite=overwrite, parquet=parquet, num_shards=num_shards)
    return len(dataset)
