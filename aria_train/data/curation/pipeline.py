"""The curation run as a chain of datatrove stages, each one executor's worth of work.

    exact dedup    ExactDedupSignature (T tasks) -> ExactFindDedups (F tasks)
    filter         reader -> ExactDedupFilter -> Gopher repetition -> Gopher quality -> C4 quality
                   [-> C4 bad words] -> FineWeb quality -> writer                          (T tasks)
    minhash        MinhashDedupSignature (T) -> MinhashDedupBuckets (buckets x workers) ->
                   MinhashDedupCluster (1) -> reader -> MinhashDedupFilter -> writer      (T)
    lines          SentenceDedup on lines: signature (T) -> find (F) -> filter -> writer  (T)

FineWeb's order: cheap exact dedup first, rule-based filters, then MinHash on what survives,
then repeated-line removal. Every stage that reads documents reads the previous stage's output
with the same T tasks, which the dedup filters need: their duplicate lists index documents by
(task, position in the task's stream). TokenCount steps mark the points the report reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aria_train.data.curation.config import FILTER_CLASSES, CurateConfig
from aria_train.data.curation.steps import TokenCount
from aria_train.errors import UserError


@dataclass
class Stage:
    name: str  # also its logging folder: WORKDIR/logs/NAME
    pipeline: list
    tasks: int


@dataclass
class Source:
    folder: str
    glob: str


def input_source(path: str) -> Source:
    """A JSONL file, or a folder of *.jsonl[.gz|.zst] files."""
    target = Path(path)
    if target.is_file():
        return Source(str(target.parent.resolve()), target.name)
    if target.is_dir():
        if not any(target.glob("*.jsonl*")):
            raise UserError(f"curate --input {path}: no *.jsonl files in the folder")
        return Source(str(target.resolve()), "*.jsonl*")
    raise UserError(f"curate --input {path}: no such file or folder")


class _Builder:
    def __init__(self, cfg: CurateConfig, source: Source, workdir: Path, output: Path, tasks: int):
        self.cfg, self.source, self.workdir, self.output, self.tasks = cfg, source, workdir, output, tasks
        self.stages: list[Stage] = []
        self.counted_input = False
        self.writers_left = _writing_stage_count(cfg)

    def reader(self) -> list:
        from datatrove.pipeline.readers import JsonlReader

        steps = [JsonlReader(self.source.folder, glob_pattern=self.source.glob, text_key=self.cfg.text_key,
                             id_key=self.cfg.id_key)]
        if not self.counted_input:
            steps.append(TokenCount("input", self.cfg.tokenizer_model))
            self.counted_input = True
        return steps

    def writer(self, label: str) -> list:
        """Counts what leaves the stage, then writes it where the next stage reads (or the output)."""
        from datatrove.pipeline.writers import JsonlWriter

        self.writers_left -= 1
        folder = self.output if self.writers_left == 0 else self.workdir / "stage_output" / label
        steps = [TokenCount(f"after {label}", self.cfg.tokenizer_model),
                 JsonlWriter(str(folder), output_filename="${rank}.jsonl", compression=None, expand_metadata=True)]
        self.source = Source(str(folder), "*.jsonl")
        return steps


def build_stages(cfg: CurateConfig, input_path: str, workdir: Path, output: Path, tasks: int) -> list[Stage]:
    """The stages of a curation run, in dependency order."""
    if tasks < 1:
        raise UserError(f"curate --tasks {tasks}: must be >= 1")
    b = _Builder(cfg, input_source(input_path), Path(workdir).resolve(), Path(output).resolve(), tasks)
    if "exact" in cfg.dedup or cfg.filters:
        _exact_and_filter_stages(b)
    if "minhash" in cfg.dedup:
        _minhash_stages(b)
    if "lines" in cfg.dedup:
        _line_stages(b)
    return b.stages


def _exact_and_filter_stages(b: _Builder) -> None:
    from datatrove.pipeline.dedup import ExactDedupFilter, ExactDedupSignature, ExactFindDedups

    head = b.reader()
    if "exact" in b.cfg.dedup:
        exact_cfg = _exact_config()
        sigs, dups = b.workdir / "exact" / "sigs", b.workdir / "exact" / "dups"
        b.stages.append(Stage("exact_signatures", head + [
            ExactDedupSignature(str(sigs), exact_cfg, finder_workers=b.cfg.finder_workers)], b.tasks))
        b.stages.append(Stage("exact_find", [ExactFindDedups(str(sigs), str(dups), exact_cfg)], b.cfg.finder_workers))
        head = b.reader() + [ExactDedupFilter(str(dups), exact_cfg)]
        if b.cfg.filters:
            head.append(TokenCount("after exact", b.cfg.tokenizer_model))
    label = "filters" if b.cfg.filters else "exact"
    b.stages.append(Stage("filter", head + quality_filters(b.cfg) + b.writer(label), b.tasks))


def _minhash_stages(b: _Builder) -> None:
    from datatrove.pipeline.dedup import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                          MinhashDedupFilter, MinhashDedupSignature)

    m = b.cfg.minhash
    config = MinhashConfig(n_grams=m.n_grams, num_buckets=m.num_buckets, hashes_per_bucket=m.hashes_per_bucket,
                           seed=m.seed)
    sigs, buckets, remove = (b.workdir / "minhash" / part for part in ("sigs", "buckets", "remove"))
    b.stages += [
        Stage("minhash_signatures", b.reader() + [
            MinhashDedupSignature(str(sigs), config=config, language=b.cfg.language)], b.tasks),
        Stage("minhash_buckets", [MinhashDedupBuckets(str(sigs), str(buckets), config=config)],
              m.num_buckets * m.workers_per_bucket),
        Stage("minhash_cluster", [MinhashDedupCluster(str(buckets), str(remove), config=config)], 1),
    ]
    b.stages.append(Stage("minhash_filter", b.reader() + [MinhashDedupFilter(str(remove))] + b.writer("minhash"),
                          b.tasks))


def _line_stages(b: _Builder) -> None:
    from datatrove.pipeline.dedup import SentDedupConfig, SentenceDedupFilter, SentenceDedupSignature
    from datatrove.pipeline.dedup import SentenceFindDedups

    s = b.cfg.lines
    config = SentDedupConfig(n_sentences=s.n_lines, split_sentences=False, min_doc_words=s.min_doc_words,
                             min_num_sentences=s.min_num_sentences)
    sigs, dups = b.workdir / "lines" / "sigs", b.workdir / "lines" / "dups"
    b.stages += [
        Stage("lines_signatures", b.reader() + [SentenceDedupSignature(
            str(sigs), finder_workers=b.cfg.finder_workers, config=config, language=b.cfg.language)], b.tasks),
        Stage("lines_find", [SentenceFindDedups(str(sigs), str(dups), config=config)], b.cfg.finder_workers),
    ]
    b.stages.append(Stage("lines_filter", b.reader() + [
        SentenceDedupFilter(str(dups), config=config, language=b.cfg.language)] + b.writer("lines"), b.tasks))


def quality_filters(cfg: CurateConfig) -> list:
    """The enabled datatrove quality filters, FineWeb's order, built with the config's arguments."""
    import datatrove.pipeline.filters as filters

    steps = []
    for name, kwargs in cfg.ordered_filters():
        cls = getattr(filters, FILTER_CLASSES[name])
        if name == "c4_badwords":
            _check_badwords_list()
        elif "language" not in kwargs:
            kwargs = {**kwargs, "language": cfg.language}
        try:
            steps.append(cls(**kwargs))
        except TypeError as err:
            raise UserError(f"curate config: filters.{name}: {err}") from None
    return steps


def _check_badwords_list() -> None:
    """C4BadWordsFilter fetches its word list over HTTP on first use (through fsspec, which needs
    aiohttp); with no network, or without aiohttp, say so before any task starts."""
    from datatrove.pipeline.filters.c4_filters import _EN_BADWORDS_URL
    from huggingface_hub import cached_assets_path

    folder = cached_assets_path(library_name="datatrove", namespace="filters", subfolder="c4_badwords")
    path = Path(folder) / _EN_BADWORDS_URL.replace("/", "_")  # datatrove's cache name for the URL
    try:
        import aiohttp  # noqa: F401  (fsspec's HTTP file system, which datatrove resolves the URL with)
        http = True
    except ImportError:
        http = False
    if not http or not path.is_file():
        raise UserError(f"curate: filter c4_badwords needs `pip install aiohttp requests` and its word list from "
                        f"{_EN_BADWORDS_URL}, cached at {path} (downloaded on first use: no network here); "
                        f"install and place it, or leave the filter off")


def _exact_config():
    from datatrove.pipeline.dedup import ExactDedupConfig

    return ExactDedupConfig(content_getter=document_text)


def document_text(document) -> str:
    """What exact dedup hashes: the text as it is (a module-level function so that it pickles)."""
    return document.text


def _writing_stage_count(cfg: CurateConfig) -> int:
    return int("exact" in cfg.dedup or bool(cfg.filters)) + int("minhash" in cfg.dedup) + int("lines" in cfg.dedup)
