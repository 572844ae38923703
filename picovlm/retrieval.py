"""Retrieval-augmented answers: the nearest training pictures' answers go into the prompt.

A few-million-parameter model trained on a few thousand items learns the answers it saw, and on a
picture of an object it never saw it tends to recall one of them word for word. A lookup of the most
similar training picture does that already, and does it well: on real data a 32x32 thumbnail lookup
beat the trained model on every figure (issue 14). So the model is given the lookup's results as
input instead of having to memorise them:

    <image> Describe the image.
    Similar: <answer of the nearest training picture>
    Similar: <answer of the second nearest>

and learns to edit them: keep what the picture shares with its neighbours, change what it does not.
The lookup becomes the model's floor rather than its rival.

During training each row's neighbours come from *other groups* (another object, not a variant of the
same one), as a test picture's do: otherwise the model would learn that the first neighbour is always
right. Pictures are similar by shape, colour and strokes (`picture_vectors`), weighted as the training
split itself says works best (`choose_weights`). The index (their vectors, answers, groups) is saved
with the model, so `VLM.answer`, the ONNX runtime and the server retrieve the same
way. numpy + Pillow only: the runtime shares this module.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path

import numpy as np
from PIL import Image

from picovlm.errors import PicovlmError
from picovlm.utils import atomic_write_bytes, atomic_write_text

INDEX_FILE = "retrieval_index.npz"
INDEX_META_FILE = "retrieval_index.json"
FACTS_FILE = "retrieval_facts.npz"
THUMBNAIL_SIZE = 32
COLOUR_BINS = 8  # per channel: 8 x 8 x 8 = 512 colours
COLOUR_SIZE = 64  # pictures are counted at 64x64 pixels
INK_BELOW = 235  # a pixel whose every channel is this bright or brighter is background, not counted
GRADIENT_SIZE = 64  # strokes are measured on the grey picture at 64x64 pixels,
GRADIENT_CELLS = 8  # in 8x8 cells of 8x8 pixels,
GRADIENT_BINS = 9  # each cell's strokes counted in 9 directions (0-180 degrees)
# What choose_weights tries: colour weights x stroke weights. Strokes weighted 2 lost to 1 on every
# validation split (docs/recipes.md, finding 27), so the grid stops at 1.
COLOUR_CHOICES = (0.0, 1.0, 2.0)
GRADIENT_CHOICES = (0.0, 1.0)
NEIGHBOUR_PREFIX = "Similar: "
READS_PICTURES = "pictures"  # FactReader heads over the index's picture vectors
READS_VISION = "vision"  # FactReader heads over the vision tower's pooled features


def thumbnail_vectors(images: Sequence[Image.Image], size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """Each picture as a size x size RGB vector, centred and unit-length (so dot product = cosine).

    The same vectors as eval's nearest-pixels lookup, so the model's floor is that baseline."""
    vectors = np.stack(
        [np.asarray(_rgb(image).resize((size, size), Image.Resampling.BILINEAR), np.float32).ravel()
         for image in images]
    )  # fmt: skip
    vectors -= vectors.mean(axis=1, keepdims=True)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-6)


def colour_histograms(images: Sequence[Image.Image]) -> np.ndarray:
    """Each picture's colours: the share of its non-background pixels in each of 8x8x8 RGB bins, square
    rooted (so the dot product is the Bhattacharyya coefficient, less ruled by one dominant colour) and
    unit-length. Where the pixels sit does not count, only which colours the picture holds: two skin
    tones of one figure, or two units of one shape in other colours, differ here more than in a
    thumbnail, whose cosine is ruled by the shape."""
    rows = []
    for image in images:  # BOX: each small pixel is the mean of the pixels it covers, as a count wants
        pixels = np.asarray(_rgb(image).resize((COLOUR_SIZE, COLOUR_SIZE), Image.Resampling.BOX), np.int64)
        ink = pixels.min(axis=2) < INK_BELOW
        level = pixels * COLOUR_BINS // 256
        colour = (level[..., 0] * COLOUR_BINS + level[..., 1]) * COLOUR_BINS + level[..., 2]
        counts = np.bincount(colour[ink], minlength=COLOUR_BINS**3).astype(np.float32)
        rows.append(np.sqrt(counts / max(int(ink.sum()), 1)))
    histograms = np.stack(rows)
    return histograms / np.maximum(np.linalg.norm(histograms, axis=1, keepdims=True), 1e-6)


def gradient_histograms(images: Sequence[Image.Image], chunk: int = 256) -> np.ndarray:
    """Each picture's strokes: a histogram of oriented gradients (HOG, Dalal & Triggs 2005), unit-length.

    The grey picture at 64x64; per cell of an 8x8 grid, the gradient magnitude summed into 9 directions
    (0-180 degrees), each cell's histogram unit-length so that faint and bold strokes count alike. The
    thumbnail says where the ink is; this says which way the strokes run, which the thumbnail misses
    when two drawings of one kind are shifted, thicker or in other colours (two characters that share
    a radical, two units of one race). chunk pictures at a time: the gradients of a whole training split
    at once would take ~100 MB per 1,000 pictures."""
    size, cells, bins = GRADIENT_SIZE, GRADIENT_CELLS, GRADIENT_BINS
    if len(images) > chunk:
        return np.concatenate(
            [gradient_histograms(images[i : i + chunk]) for i in range(0, len(images), chunk)]
        )
    if not len(images):
        return np.zeros((0, cells * cells * bins), np.float32)
    grey = np.stack(
        [np.asarray(_rgb(image).convert("L").resize((size, size), Image.Resampling.BILINEAR), np.float32)
         for image in images]
    ) / 255.0  # fmt: skip
    dx, dy = np.zeros_like(grey), np.zeros_like(grey)
    dx[:, :, 1:-1] = grey[:, :, 2:] - grey[:, :, :-2]  # central differences
    dy[:, 1:-1, :] = grey[:, 2:, :] - grey[:, :-2, :]
    magnitude = np.hypot(dx, dy)
    direction = np.minimum((np.arctan2(dy, dx) % np.pi / np.pi * bins).astype(np.int64), bins - 1)
    side = size // cells
    cell = (np.arange(size) // side)[:, None] * cells + (np.arange(size) // side)[None, :]
    slot = (np.arange(len(images))[:, None, None] * cells * cells + cell[None]) * bins + direction
    counts = np.bincount(slot.ravel(), magnitude.ravel(), len(images) * cells * cells * bins)
    counts = counts.reshape(len(images), cells * cells, bins)
    counts /= np.linalg.norm(counts, axis=2, keepdims=True) + 1e-3
    vectors = counts.reshape(len(images), -1).astype(np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-6)


@dataclass
class PictureFeatures:
    """What the index can compare pictures by, kept apart until weighted: thumbnails (shape), colour
    histograms (colours), gradient histograms (strokes); None where not computed."""

    thumbnails: np.ndarray
    colours: np.ndarray | None = None
    gradients: np.ndarray | None = None

    @classmethod
    def of(cls, images: Sequence[Image.Image], colours: bool = True, gradients: bool = True):
        return cls(
            thumbnail_vectors(images),
            colour_histograms(images) if colours else None,
            gradient_histograms(images) if gradients else None,
        )

    @classmethod
    def concatenate(cls, parts: Sequence[PictureFeatures]) -> PictureFeatures:
        def joined(name):
            arrays = [getattr(part, name) for part in parts]
            return None if any(a is None for a in arrays) else np.concatenate(arrays)

        return cls(np.concatenate([p.thumbnails for p in parts]), joined("colours"), joined("gradients"))

    def vectors(self, colour_weight: float = 0.0, gradient_weight: float = 0.0) -> np.ndarray:
        """The index's vectors: for two pictures, with weights c and g,

            dot product = (thumbnail cosine + c x colour cosine + g x stroke cosine) / (1 + c + g)

        (one matrix product finds the neighbours; the vectors stay unit-length, but for a picture with
        no colour but white, whose colour part is zero)."""
        parts = [self.thumbnails]
        for features, weight, name in ((self.colours, colour_weight, "colours"),
                                       (self.gradients, gradient_weight, "gradients")):  # fmt: skip
            if weight:
                if features is None:
                    raise ValueError(f"PictureFeatures without {name} cannot weight them {weight}")
                parts.append(np.sqrt(weight) * features)
        return np.concatenate(parts, axis=1) / np.sqrt(1.0 + colour_weight + gradient_weight)


def picture_vectors(images: Sequence[Image.Image], colour_weight: float = 0.0, gradient_weight: float = 0.0):
    """The vectors the index compares (PictureFeatures.vectors), computing only the features weighted."""
    features = PictureFeatures.of(images, colours=bool(colour_weight), gradients=bool(gradient_weight))
    return features.vectors(colour_weight, gradient_weight)


def picture_vector_width(colour_weight: float, gradient_weight: float = 0.0) -> int:
    """How many values `picture_vectors` gives a picture: the thumbnail's, and the weighted features'."""
    width = 3 * THUMBNAIL_SIZE**2
    width += COLOUR_BINS**3 if colour_weight else 0
    width += GRADIENT_CELLS**2 * GRADIENT_BINS if gradient_weight else 0
    return width


@dataclass
class WeightChoice:
    """What choose_weights found: the weights, and each tried pair's leave-one-object-out token F1."""

    colour_weight: float
    gradient_weight: float
    scores: dict[tuple[float, float], float]
    queries: int

    def describe(self) -> str:
        tried = ", ".join(f"{c:g}/{g:g}: {f1:.3f}" for (c, g), f1 in self.scores.items())
        return (f"retrieval weights chosen on the training split: colour {self.colour_weight:g}, strokes "
                f"{self.gradient_weight:g} (token F1 of the nearest other object's answer over {self.queries} "
                f"rows, colour/strokes: {tried})")  # fmt: skip


def choose_weights(
    features: PictureFeatures,
    answers: Sequence[str],
    groups: Sequence[str],
    colour_choices: Sequence[float] = COLOUR_CHOICES,
    gradient_choices: Sequence[float] = GRADIENT_CHOICES,
    max_queries: int = 3000,
    seed: int = 0,
) -> WeightChoice:
    """The weights of colours and strokes under which a training row's nearest picture *of another
    object* has the answer most like its own (mean token F1), as a test picture's nearest would.

    Which features tell a dataset's objects apart is a fact about the data: colours name emoji's skin
    tones and wesnoth's units, and add only noise to black characters on white, whose strokes matter
    (docs/recipes.md, finding 27). The training split says so itself, with no test picture involved. Ties
    go to the lighter weights, which come first in the grid."""
    from picovlm.eval.metrics import token_f1

    n = len(answers)
    rng = np.random.default_rng(seed)
    queries = np.sort(rng.choice(n, max_queries, replace=False)) if n > max_queries else np.arange(n)
    group_ids = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    row_group = np.array([group_ids[g] for g in groups])
    pairs = [(c, g) for c in colour_choices for g in gradient_choices]
    nearest = {pair: np.empty(len(queries), np.int64) for pair in pairs}
    for start in range(0, len(queries), 512):  # similarities a block of queries at a time: memory stays small
        rows = queries[start : start + 512]
        same_object = row_group[rows][:, None] == row_group[None, :]
        similar = {"thumbnails": features.thumbnails[rows] @ features.thumbnails.T}
        for name in ("colours", "gradients"):
            table = getattr(features, name)
            similar[name] = table[rows] @ table.T if table is not None else 0.0
        for c, g in pairs:
            score = similar["thumbnails"] + c * similar["colours"] + g * similar["gradients"]
            score = np.where(same_object, -np.inf, score)
            nearest[(c, g)][start : start + len(rows)] = score.argmax(axis=1)
    cache: dict[tuple[int, int], float] = {}

    def f1(i: int, j: int) -> float:
        if (i, j) not in cache:
            cache[(i, j)] = token_f1(answers[j], answers[i])
        return cache[(i, j)]

    scores = {pair: float(np.mean([f1(int(i), int(j)) for i, j in zip(queries, nearest[pair])]))
              for pair in pairs}  # fmt: skip
    best = max(pairs, key=lambda pair: (round(scores[pair], 4), -pair[0] - pair[1]))
    return WeightChoice(best[0], best[1], scores, len(queries))


def _rgb(image: Image.Image) -> Image.Image:
    from picovlm.data.processor import to_rgb  # transparency over white, as the model sees it

    return to_rgb(image)


def retrieval_prompt(question: str, neighbour_answers: Sequence[str]) -> str:
    """The question followed by one 'Similar: ...' line per neighbour, nearest first."""
    return "\n".join([question, *(NEIGHBOUR_PREFIX + answer for answer in neighbour_answers)])


@dataclass
class FactReader:
    """How strongly a new picture supports each training row's facts, for the neighbours' vote
    (GenerationConfig.copy_fact_weight): one linear classifier per field (a head) beside each indexed
    row's class per field.

        support(features, rows)[i][r] = sum over the fields row r has of log P_heads(its value | picture i)

    What the heads read is `reads`:
      "pictures"  the index's own picture vectors (thumbnail, colours, strokes: `RetrievalIndex.vectors_of`),
                  heads fitted on the training rows when the index is built (`fit_fact_probes`). What
                  training saves since finding 28: on the real sets these probes name a unit's race, an
                  emoji's group, a glyph's radical far better than the vision tower does.
      "vision"    the vision tower's mean-pooled features, heads trained with the fact loss
                  (picovlm/train/facts.py): what models saved before finding 28 hold.
    Pixels find the neighbours; the heads, fitted on every training picture's facts, say which of them
    the picture agrees with (docs/recipes.md, findings 24 and 28). With `values` (each field's name and
    its values in class order, the training run's FactVocabulary) the heads also name a new picture's
    facts (`read`), which GenerationConfig.probed_facts states in the answer (finding 37)."""

    classes: np.ndarray  # (n_index, n_fields) int32: each indexed row's class per field, -1 = unknown
    weights: list[np.ndarray] | None = None  # per field (n_classes, width read); None until the heads are set
    biases: list[np.ndarray] | None = None  # per field (n_classes,)
    reads: str = READS_VISION  # what the heads read: READS_PICTURES or READS_VISION
    values: dict[str, list[str]] | None = None  # field -> its values by class; None in runs before finding 37

    def with_heads(self, heads: Sequence[tuple[np.ndarray, np.ndarray]], reads: str) -> FactReader:
        """This reader with the heads' (weight, bias) per field, reading `reads` (no values named yet:
        `with_values`)."""
        if len(heads) != self.classes.shape[1]:
            raise PicovlmError(f"{len(heads)} fact heads for {self.classes.shape[1]} fields")
        if reads not in (READS_PICTURES, READS_VISION):
            raise PicovlmError(f"fact heads read {READS_PICTURES!r} or {READS_VISION!r}, not {reads!r}")
        weights = [np.asarray(w, np.float32) for w, _ in heads]
        return FactReader(self.classes, weights, [np.asarray(b, np.float32) for _, b in heads], reads)

    def with_values(self, values: dict[str, list[str]]) -> FactReader:
        """This reader naming each field's classes: `values` maps each field, in the heads' order, to its
        values in class order (FactVocabulary.values)."""
        counts = [len(b) for b in self.biases or ()]
        if counts and [len(v) for v in values.values()] != counts:
            raise PicovlmError(f"fact values for {[len(v) for v in values.values()]} classes per field, and "
                               f"the heads have {counts}: they come from another training split")  # fmt: skip
        return dataclasses.replace(self, values={name: list(v) for name, v in values.items()})

    def log_probabilities(self, features: np.ndarray) -> list[np.ndarray]:
        """Each field's (n, n_classes) log-probabilities for n pictures' features, as the heads read them."""
        if self.weights is None or self.biases is None:
            raise PicovlmError("this fact reader has no heads: set them with with_heads before reading")
        out = []
        for weight, bias in zip(self.weights, self.biases):
            logits = features.astype(np.float32) @ weight.T + bias  # (n, n_classes)
            peak = logits.max(axis=1, keepdims=True)
            out.append(logits - peak - np.log(np.exp(logits - peak).sum(axis=1, keepdims=True)))
        return out

    def read(self, features: np.ndarray) -> list[dict[str, str]]:
        """Each picture's most likely value of every field, by the heads: what probed_facts states."""
        if self.values is None:
            raise PicovlmError(
                "this model's fact probes do not know their fields' values (it was trained before finding "
                "37): train it again to state the facts they read (probed_facts)"
            )
        best = [lp.argmax(axis=1) for lp in self.log_probabilities(features)]
        names = list(self.values)
        return [
            {name: self.values[name][int(b[i])] for name, b in zip(names, best)} for i in range(len(features))
        ]

    def support(self, features: np.ndarray, rows: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """(n, width) features of n pictures, as the heads read them (`reads`), and each picture's
        neighbour rows -> for each picture, the heads' log-probability of each neighbour's facts, summed
        over its known fields."""
        total = [np.zeros(len(r)) for r in rows]
        for field, log_probs in enumerate(self.log_probabilities(features)):
            for i, neighbour_rows in enumerate(rows):
                classes = self.classes[np.asarray(neighbour_rows, int), field]
                total[i] += np.where(classes >= 0, log_probs[i, np.maximum(classes, 0)], 0.0)
        return total

    def save(self, directory: Path) -> None:
        import io

        if self.weights is None or self.biases is None:
            raise PicovlmError("a fact reader is saved with its heads: set them with with_heads first")
        buffer = io.BytesIO()
        arrays = {f"weight_{i}": w for i, w in enumerate(self.weights)}
        arrays.update({f"bias_{i}": b for i, b in enumerate(self.biases)})
        if self.values is not None:
            arrays["values"] = np.array(json.dumps(self.values, ensure_ascii=False))
        np.savez_compressed(buffer, classes=self.classes, reads=np.array(self.reads), **arrays)
        atomic_write_bytes(directory / FACTS_FILE, buffer.getvalue())

    @classmethod
    def load(cls, directory: Path) -> FactReader | None:
        if not (directory / FACTS_FILE).exists():
            return None
        with np.load(directory / FACTS_FILE) as data:
            classes = data["classes"]
            fields = range(classes.shape[1])
            reads = str(data["reads"]) if "reads" in data.files else READS_VISION  # saved before finding 28
            weights = [data[f"weight_{i}"] for i in fields]
            values = json.loads(str(data["values"])) if "values" in data.files else None  # since finding 37
            return cls(classes, weights, [data[f"bias_{i}"] for i in fields], reads, values)


@dataclass
class RetrievalIndex:
    """Training pictures as vectors (`picture_vectors`: thumbnails, and colours and strokes where their
    weights are > 0) with their answers and groups (and, from a run with facts, its fact probes: `facts`)."""

    vectors: np.ndarray  # (n, 3 * size * size [+ 512 colours] [+ 576 strokes]) float16, unit-length rows
    answers: list[str]
    groups: list[str]
    k: int  # neighbours per prompt
    facts: FactReader | None = None
    colour_weight: float = 0.0  # VLMConfig.retrieval_colour_weight; 0 in indexes saved before it existed
    gradient_weight: float = 0.0  # VLMConfig.retrieval_gradient_weight; 0 in indexes saved before it existed
    _table: np.ndarray | None = dataclass_field(default=None, init=False, repr=False, compare=False)
    _fact_matcher: tuple | None = dataclass_field(default=None, init=False, repr=False, compare=False)

    @property
    def table(self) -> np.ndarray:
        """The vectors as float32, converted once: what searches and the fact probes compute with. Kept
        beside the float16 vectors (twice their bytes) because converting on every search cost ~20 ms
        per request for emoji's 2,888 x 4,160 index, against ~1 ms for the search itself."""
        if self._table is None:
            self._table = self.vectors.astype(np.float32)
        return self._table

    @classmethod
    def build(
        cls,
        images: Sequence[Image.Image],
        answers: Sequence[str],
        groups: Sequence[str],
        k: int,
        fact_classes: Sequence[Sequence[int]] | None = None,
        colour_weight: float = 0.0,
        gradient_weight: float = 0.0,
        features: PictureFeatures | None = None,
    ):
        """fact_classes: each row's class per fact field (-1 = unknown), for a reader of the fact heads;
        features: the pictures' PictureFeatures where the caller has them already."""
        if not len(images):
            raise PicovlmError("a retrieval index needs at least one training picture")
        facts = None
        if fact_classes is not None:
            facts = FactReader(np.asarray(fact_classes, np.int32).reshape(len(images), -1))
        if features is None:
            vectors = picture_vectors(images, colour_weight, gradient_weight)
        else:
            vectors = features.vectors(colour_weight, gradient_weight)
        return cls(
            vectors.astype(np.float16), list(answers), list(groups), k, facts, colour_weight, gradient_weight
        )

    def vectors_of(self, images: Sequence[Image.Image]) -> np.ndarray:
        """New pictures as vectors comparable with the index's."""
        if not images:
            return np.zeros((0, self.vectors.shape[1]), np.float32)
        return picture_vectors(images, self.colour_weight, self.gradient_weight)

    def __len__(self) -> int:
        return len(self.answers)

    @property
    def facts_read_pictures(self) -> bool:
        """Whether the fact heads read the pictures themselves (else the vision tower's features)."""
        return self.facts is not None and self.facts.reads == READS_PICTURES

    def fact_support(self, images: Sequence[Image.Image], rows: Sequence[Sequence[int]], vision_pooled=None):
        """`FactReader.support` of each new picture's neighbour rows, from what the heads read: the
        pictures' vectors, or the vision tower's (n, D_vit) pooled features `vision_pooled` (heads saved
        before finding 28)."""
        return self.facts.support(self._fact_features(images, vision_pooled), rows)

    def _fact_features(self, images: Sequence[Image.Image], vision_pooled=None) -> np.ndarray:
        if self.facts is None:
            raise PicovlmError("this retrieval index keeps no facts to weigh its neighbours by")
        if self.facts_read_pictures:
            return self.vectors_of(images)
        if vision_pooled is None:
            raise PicovlmError("these fact heads read the vision tower's pooled features: pass them")
        return np.asarray(vision_pooled, np.float32)

    def read_facts(self, images: Sequence[Image.Image], vision_pooled=None) -> list[dict[str, str]]:
        """`FactReader.read` of each new picture: the value of every fact field its probes find likeliest."""
        return self.facts.read(self._fact_features(images, vision_pooled)) if images else []

    @property
    def fact_matcher(self):
        """A ValueMatcher (picovlm/eval/facts.py) that finds the facts in answers, learnt from the indexed
        rows' answers and facts: where `restate_facts` looks for what to replace."""
        if self._fact_matcher is None or self._fact_matcher[0] is not self.facts:  # facts may be replaced
            from picovlm.eval.facts import ValueMatcher

            if self.facts is None or self.facts.values is None:
                raise PicovlmError("stating facts needs fact probes that know their fields' values")
            values = list(self.facts.values.items())
            rows = [
                ({name: known[c] for (name, known), c in zip(values, classes) if c >= 0}, answer)
                for classes, answer in zip(self.facts.classes.tolist(), self.answers)
            ]
            self._fact_matcher = (self.facts, ValueMatcher(rows))
        return self._fact_matcher[1]

    def restate_facts(
        self, answers: Sequence[str], images: Sequence[Image.Image], fields: Sequence[str]
    ) -> list[str]:
        """Each answer with the value it states of each of `fields` replaced by what the fact probes read
        in its picture (`GenerationConfig.probed_facts`; docs/recipes.md, finding 37)."""
        read = self.read_facts(images)
        return [
            self.fact_matcher.restate(answer, {name: facts[name] for name in fields if name in facts})
            for answer, facts in zip(answers, read)
        ]

    def neighbours(
        self,
        query: np.ndarray,
        exclude_groups: Sequence[str] | None = None,
        chunk: int = 512,
        k: int | None = None,
    ) -> list[list[int]]:
        """Rows of the k (default: the index's k) most similar pictures for each query vector, most
        similar first; a row whose group equals the query's exclude group is never returned (a training
        row's own object)."""
        table = self.table
        group_ids = {g: i for i, g in enumerate(dict.fromkeys(self.groups))}
        row_group = np.array([group_ids[g] for g in self.groups])
        k = min(k or self.k, len(self))
        out: list[list[int]] = []
        for start in range(0, len(query), chunk):
            scores = query[start : start + chunk].astype(np.float32) @ table.T  # (q, n)
            if exclude_groups is not None:
                excluded = np.array([group_ids.get(g, -1) for g in exclude_groups[start : start + chunk]])
                scores[row_group[None, :] == excluded[:, None]] = -np.inf
            top = (
                np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else np.argsort(-scores)
            )
            for row, candidates in zip(scores, top):
                ordered = candidates[np.argsort(-row[candidates], kind="stable")]
                out.append([int(j) for j in ordered if np.isfinite(row[j])])
        return out

    def neighbour_rows(self, images: Sequence[Image.Image], k: int | None = None) -> list[list[int]]:
        """The rows of each new picture's k (default: the index's k) nearest training pictures, nearest
        first."""
        return self.neighbours(self.vectors_of(images), k=k)

    def neighbour_answers(self, images: Sequence[Image.Image], k: int | None = None) -> list[list[str]]:
        """The answers of each new picture's k (default: the index's k) nearest training pictures,
        nearest first."""
        return self.answers_of(self.neighbour_rows(images, k))

    def answers_of(self, rows: Sequence[Sequence[int]]) -> list[list[str]]:
        """The answers of each picture's neighbour rows, in their order."""
        return [[self.answers[j] for j in found] for found in rows]

    def prompt(self, question: str, neighbour_answers: Sequence[str]) -> str:
        """The retrieval prompt from a picture's neighbours' answers, nearest first: the first k of them
        (copy_bias may have looked up more)."""
        return retrieval_prompt(question, neighbour_answers[: self.k])

    def prompts(self, questions: Sequence[str], images: Sequence[Image.Image]) -> list[str]:
        """The retrieval prompt for each (question, picture) of a new picture."""
        return [self.prompt(q, answers) for q, answers in zip(questions, self.neighbour_answers(images))]

    # --- On disk, beside the model's weights ---------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        import io

        directory = Path(directory)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, vectors=self.vectors)
        atomic_write_bytes(directory / INDEX_FILE, buffer.getvalue())
        meta = {"k": self.k, "thumbnail_size": THUMBNAIL_SIZE, "colour_weight": self.colour_weight,
                "gradient_weight": self.gradient_weight, "answers": self.answers, "groups": self.groups}  # fmt: skip
        atomic_write_text(directory / INDEX_META_FILE, json.dumps(meta, ensure_ascii=False))
        if self.facts is not None and self.facts.weights is not None:
            self.facts.save(directory)

    @classmethod
    def load(cls, directory: str | Path) -> RetrievalIndex | None:
        """The index saved in a model folder, or None when the model does not retrieve."""
        directory = Path(directory)
        if not (directory / INDEX_META_FILE).exists():
            return None
        if not (directory / INDEX_FILE).exists():
            raise PicovlmError(
                f"{directory} has {INDEX_META_FILE} but not {INDEX_FILE}: copy the whole model folder."
            )
        meta = json.loads((directory / INDEX_META_FILE).read_text(encoding="utf-8"))
        with np.load(directory / INDEX_FILE) as data:
            vectors = data["vectors"]
        if len(vectors) != len(meta["answers"]):
            raise PicovlmError(f"{directory}: the retrieval index has {len(vectors)} vectors for "
                               f"{len(meta['answers'])} answers; re-save the model.")  # fmt: skip
        facts = FactReader.load(directory)
        if facts is not None and len(facts.classes) != len(vectors):
            raise PicovlmError(f"{directory}: {FACTS_FILE} has facts for {len(facts.classes)} rows and the "
                               f"index {len(vectors)}; copy the whole model folder that training wrote.")  # fmt: skip
        colour_weight = float(meta.get("colour_weight", 0.0))
        gradient_weight = float(meta.get("gradient_weight", 0.0))
        expected = picture_vector_width(colour_weight, gradient_weight)
        if vectors.shape[1] != expected:
            raise PicovlmError(f"{directory}: the retrieval index's vectors have {vectors.shape[1]} values "
                               f"and this picovlm compares {expected}; re-save the model with this version.")  # fmt: skip
        return cls(
            vectors, meta["answers"], meta["groups"], int(meta["k"]), facts, colour_weight, gradient_weight
        )


# --- Training: the index from the training split, neighbours from other objects -----------------------


def _row_groups(dataset) -> list[str]:
    """Each row's object: its `group` where it has one, else a hash of its first image's bytes."""
    import hashlib

    groups = dataset["group"] if "group" in dataset.column_names else [""] * len(dataset)
    out = []
    for i, group in enumerate(groups):
        if group:
            out.append(str(group))
            continue
        image = (dataset[i]["images"] or [None])[0]
        out.append("image:" + hashlib.blake2b(image.tobytes() if image else b"", digest_size=12).hexdigest())
    return out


def first_images(dataset, chunk: int = 256) -> tuple[list[int], list[Image.Image]]:
    """(row numbers, first image) of the rows that have an image, read a chunk at a time."""
    rows, images = [], []
    for start in range(0, len(dataset), chunk):
        for offset, row_images in enumerate(dataset[start : start + chunk]["images"]):
            if row_images and row_images[0] is not None:
                rows.append(start + offset)
                images.append(row_images[0].copy())
    return rows, images


def with_neighbours(dataset, index: RetrievalIndex, exclude_own_group: bool):
    """A copy of a cauldron split (in memory) whose first question of each row carries its neighbours'
    answers; rows without an image stay as they are."""
    rows, images = first_images(dataset)
    groups = _row_groups(dataset) if exclude_own_group else None
    found = index.neighbours(
        index.vectors_of(images),
        exclude_groups=[groups[r] for r in rows] if groups else None,
    )
    prompts = {r: [index.answers[j] for j in neighbours] for r, neighbours in zip(rows, found)}

    def rewrite(texts, row):
        if row not in prompts or not texts:
            return {"texts": texts}
        return {"texts": [{**texts[0], "user": retrieval_prompt(texts[0]["user"], prompts[row])}, *texts[1:]]}

    return dataset.map(rewrite, input_columns="texts", with_indices=True, keep_in_memory=True)


def indexed_pictures(train_dataset, texts=None) -> tuple[list[int], list[Image.Image]]:
    """(row numbers, first image) of the training rows an index keeps: those with a picture and an
    answer. texts: the split's `texts` column, where the caller has read it already."""
    texts = train_dataset["texts"] if texts is None else texts
    rows, images = first_images(train_dataset)
    keep = [(r, im) for r, im in zip(rows, images) if texts[r] and texts[r][0].get("assistant")]
    return [r for r, _ in keep], [im for _, im in keep]


def build_training_index(
    train_dataset,
    k: int,
    encode_facts=None,
    colour_weight: float | str = 0.0,
    gradient_weight: float | str = 0.0,
    report=None,
) -> RetrievalIndex:
    """The index of a training split: every row with an image and an answer, with its object's group.
    encode_facts (e.g. FactVocabulary.encode): a row's `fields` -> its class per field (negative =
    unknown); the index then keeps them, for the fact heads' weighting of the neighbours' vote.
    colour_weight, gradient_weight: how much colours and strokes count beside the thumbnails
    (`PictureFeatures.vectors`); "auto" = as `choose_weights` finds on this split, said to report (a
    callable taking one line, e.g. the run's notes)."""
    texts = train_dataset["texts"]
    groups = _row_groups(train_dataset)
    kept_rows, kept_images = indexed_pictures(train_dataset, texts)
    fact_classes = None
    if encode_facts is not None:
        fields = train_dataset["fields"]
        fact_classes = [[max(c, -1) for c in encode_facts(fields[r])] for r in kept_rows]
    answers = [texts[r][0]["assistant"] for r in kept_rows]
    kept_groups = [groups[r] for r in kept_rows]
    features = PictureFeatures.of(kept_images, colours=colour_weight != 0, gradients=gradient_weight != 0)
    if "auto" in (colour_weight, gradient_weight):
        choice = choose_weights(
            features,
            answers,
            kept_groups,
            COLOUR_CHOICES if colour_weight == "auto" else (float(colour_weight),),
            GRADIENT_CHOICES if gradient_weight == "auto" else (float(gradient_weight),),
        )
        colour_weight, gradient_weight = choice.colour_weight, choice.gradient_weight
        if report is not None:
            report(choice.describe())
    return RetrievalIndex.build(
        kept_images,
        answers,
        kept_groups,
        k,
        fact_classes,
        float(colour_weight),
        float(gradient_weight),
        features,
    )
