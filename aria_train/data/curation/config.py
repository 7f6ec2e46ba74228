"""Settings of a curation run (tools/curate.py): which dedup stages and quality filters run, and
with which parameters. Defaults are the ones FineWeb published with datatrove (MinHash: 5-grams,
14 buckets x 8 hashes; Gopher/C4/FineWeb filters with datatrove's default thresholds).

A YAML file (pipelines/curation/curate.yaml is the documented default) maps onto CurateConfig;
unknown keys, unknown filter names and filter arguments the datatrove class does not take fail
with one UserError line naming the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from aria_train.errors import UserError

# Quality filters, in the order they run (FineWeb's order), and the datatrove class of each.
FILTER_CLASSES = {
    "gopher_repetition": "GopherRepetitionFilter",  # repeated lines/paragraphs/n-grams inside a doc
    "gopher_quality": "GopherQualityFilter",
    "c4_quality": "C4QualityFilter",  # also removes lines (no terminal punctuation, javascript, ...)
    "c4_badwords": "C4BadWordsFilter",  # needs a word list datatrove downloads: off by default
    "fineweb_quality": "FineWebQualityFilter",
}
DEFAULT_FILTERS = ("gopher_repetition", "gopher_quality", "c4_quality", "fineweb_quality")
DEDUP_STAGES = ("exact", "minhash", "lines")


@dataclass
class MinhashSettings:
    n_grams: int = 5  # word n-grams per shingle
    num_buckets: int = 14  # LSH bands
    hashes_per_bucket: int = 8  # rows per band: similarity threshold about (1/14)^(1/8) = 0.72
    seed: int = 1
    workers_per_bucket: int = 1  # stage-2 tasks = num_buckets * workers_per_bucket


@dataclass
class LineDedupSettings:
    """datatrove's SentenceDedup run on lines (split_sentences=False): a span of n_lines lines
    that occurs in another document is removed; documents left too short are dropped."""

    n_lines: int = 3
    min_doc_words: int = 50
    min_num_sentences: int = 3


@dataclass
class CurateConfig:
    language: str = "eng"  # datatrove language code: picks the word tokenizer (spaCy, offline)
    text_key: str = "text"
    id_key: str = "id"
    dedup: list = field(default_factory=lambda: list(DEDUP_STAGES))
    # filter name -> keyword arguments of its datatrove class ({} = datatrove's defaults)
    filters: dict = field(default_factory=lambda: {name: {} for name in DEFAULT_FILTERS})
    minhash: MinhashSettings = field(default_factory=MinhashSettings)
    lines: LineDedupSettings = field(default_factory=LineDedupSettings)
    finder_workers: int = 1  # tasks of the exact/line duplicate finders (hash-range shards)
    tokenizer_model: str = ""  # token counts in the report; "" = the demo tokenizer

    def validate(self) -> "CurateConfig":
        if not isinstance(self.dedup, list) or not isinstance(self.filters, dict):
            raise UserError("curate config: dedup must be a list and filters a mapping")
        self.filters = {name: ({} if kwargs is None else kwargs) for name, kwargs in self.filters.items()}
        for stage in self.dedup:
            if stage not in DEDUP_STAGES:
                raise UserError(f"curate config: dedup stage {stage!r} is not one of {', '.join(DEDUP_STAGES)}")
        for name, kwargs in self.filters.items():
            if name not in FILTER_CLASSES:
                raise UserError(f"curate config: filter {name!r} is not one of {', '.join(FILTER_CLASSES)}")
            if not isinstance(kwargs, dict):
                raise UserError(f"curate config: filters.{name} must map argument names to values")
        for name in ("num_buckets", "hashes_per_bucket", "n_grams", "workers_per_bucket"):
            if getattr(self.minhash, name) < 1:
                raise UserError(f"curate config: minhash.{name}={getattr(self.minhash, name)} must be >= 1")
        if self.lines.n_lines < 1 or self.finder_workers < 1:
            raise UserError("curate config: lines.n_lines and finder_workers must be >= 1")
        if not self.dedup and not self.filters:
            raise UserError("curate config: every dedup stage and every filter is off: nothing to do")
        return self

    def ordered_filters(self) -> list[tuple[str, dict]]:
        return [(name, self.filters[name]) for name in FILTER_CLASSES if name in self.filters]


def load_curate_config(path: str | None = None, disable: tuple = (), enable: tuple = ()) -> CurateConfig:
    """CurateConfig from YAML (or defaults), then `disable`/`enable` (dedup stage or filter names)."""
    raw = _read_yaml(path) if path else {}
    config = _build(CurateConfig, raw, "curate config")
    for name in disable:
        if name in config.dedup:
            config.dedup.remove(name)
        elif name in config.filters:
            del config.filters[name]
        elif name not in DEDUP_STAGES and name not in FILTER_CLASSES:
            raise UserError(f"--disable {name}: not a dedup stage ({', '.join(DEDUP_STAGES)}) "
                            f"or filter ({', '.join(FILTER_CLASSES)})")
    for name in enable:
        if name in DEDUP_STAGES:
            if name not in config.dedup:
                config.dedup.append(name)
        elif name in FILTER_CLASSES:
            config.filters.setdefault(name, {})
        else:
            raise UserError(f"--enable {name}: not a dedup stage ({', '.join(DEDUP_STAGES)}) "
                            f"or filter ({', '.join(FILTER_CLASSES)})")
    config.dedup = [stage for stage in DEDUP_STAGES if stage in config.dedup]  # run order is fixed
    return config.validate()


def _read_yaml(path: str) -> dict:
    if not Path(path).is_file():
        raise UserError(f"curate config {path}: file not found")
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError:
        raise UserError(f"curate config {path}: not valid YAML") from None
    if not isinstance(data, dict):
        raise UserError(f"curate config {path}: expected a mapping at the top level")
    return data


def _build(cls, raw: dict, where: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            raise UserError(f"{where}: unknown key {key!r} (known: {', '.join(fields)})")
        nested = {"minhash": MinhashSettings, "lines": LineDedupSettings}.get(key) if cls is CurateConfig else None
        if nested is not None:
            if not isinstance(value, dict):
                raise UserError(f"{where}: {key} must be a mapping")
            value = _build(nested, value, f"{where}: {key}")
        kwargs[key] = value
    return cls(**kwargs)
