"""Small datatrove pipeline steps of our own, and the offline check of datatrove's word tokenizer.

TokenCount stamps each document with its token count under the training tokenizer (the one
tools/preprocess_data.py will use), so the report's token numbers are the tokens a run will see;
datatrove's own TokensCounter needs a HF `tokenizers` file, which a sentencepiece model is not.
Its stats ("documents", "tokens") land in datatrove's per-task stats files with the rest.
"""

from __future__ import annotations

from datatrove.pipeline.base import PipelineStep

from aria_train.errors import UserError

TOKEN_COUNT_PREFIX = "📊 aria tokens "


class TokenCount(PipelineStep):
    """Counts documents and tokens passing this point; `label` names the point in the report."""

    type = "🔢 - TOKENIZER"

    def __init__(self, label: str, tokenizer_model: str = ""):
        self.name = TOKEN_COUNT_PREFIX + label  # before super().__init__: it names the stats
        super().__init__()
        self.label = label
        self.tokenizer_model = tokenizer_model
        self._tokenizer = None

    def run(self, data, rank: int = 0, world_size: int = 1):
        from aria_train.data.tokenizer import load_tokenizer

        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_model)
        for document in data:
            with self.track_time():
                count = len(self._tokenizer.encode(document.text)) + 1  # + the eod preprocessing appends
                document.metadata["token_count"] = count
                self.stat_update("documents")
                self.stat_update("tokens", value=count)
            yield document

    def __getstate__(self):  # the sentencepiece processor is rebuilt in each task
        state = dict(self.__dict__)
        state["_tokenizer"] = None
        return state


def check_word_tokenizer(language: str) -> None:
    """Fails early, with one line, when datatrove's word tokenizer for `language` cannot run here.

    datatrove tokenizes words for MinHash shingles and the Gopher/C4/FineWeb filters. For English
    it uses spaCy's blank (rule-based) pipeline, which ships inside the spacy package: nothing is
    downloaded. Languages assigned to stanza and a few others need model downloads, which this
    check surfaces before any task starts instead of deep inside one.
    """
    from datatrove.utils.word_tokenizers import load_tokenizer_assignments

    factories = load_tokenizer_assignments()
    if language not in factories:
        raise UserError(f"curate: datatrove has no word tokenizer for language {language!r}")
    try:  # a fresh instance: the cached one the pipeline steps share stays unloaded (it pickles light)
        tokenizer = factories[language]()
        tokenizer.word_tokenize("A probe sentence. And another one.")
        tokenizer.span_tokenize("A probe sentence. And another one.")
    except Exception as err:  # noqa: BLE001 - any failure of the probe means it cannot run here
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"curate: datatrove's word tokenizer for language {language!r} cannot run offline here ({first}); "
            f"install what it names, or pick another language"
        ) from None
