"""MultimodalMicroBatchIterator: one rank's micro-batches of the multimodal stream (mixture.py).

Every rank plans all G sequences of a global batch (index lookups), and reads, tokenizes and
decodes only its own G/W of them, so a rank's data work does not grow with the world size.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from aria_train.data.batches import check_batch_layout, consumed_samples_of
from aria_train.data.documents import add_document_fields, document_ids_after_eod
from aria_train.data.errors import DataError
from aria_train.data.multimodal.mixture import MultimodalMixture, PackedSequence
from aria_train.data.multimodal.render import SampleRenderer


class MultimodalMicroBatchIterator:
    """MicroBatchIterator's interface over a MultimodalMixture. Each micro-batch dict:
    tokens/labels/position_ids [B, S] int64, loss_mask [B, S] float32, is_visual [B, S] bool
    (the `<|img|>` positions), patches [T, 3*p*p] float32 (None without images: crops of the
    micro-batch in the order of their image tokens, row-major over the batch), grid [(h, w)] per
    crop, num_image_tokens int (= sum of the crops' queries). With clips or audio clips (IMP's
    options) also video_patches, video_grid, audio_patches, audio_grid and media_order
    (aria_train.nn.media). With reset_attention_mask also document_ids [B, S] (a new document at
    every packed piece and after every eod token, aria_train.data.documents), with
    reset_position_ids position ids restarting there."""

    def __init__(self, mixture: MultimodalMixture, global_batch_size: int, micro_batch_size: int,
                 dp_rank: int, dp_size: int, consumed_samples: int = 0, reset_position_ids: bool = False,
                 reset_attention_mask: bool = False):
        check_batch_layout(global_batch_size, micro_batch_size, dp_rank, dp_size, consumed_samples)
        self.mixture = mixture
        self.reset_position_ids = reset_position_ids
        self.reset_attention_mask = reset_attention_mask
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.consumed_samples = 0
        if consumed_samples:
            self._replay(consumed_samples)

    @property
    def bad_samples(self):
        """The mixture's BadSamples (counts, summary())."""
        return self.mixture.bad

    def bad_samples_at(self, state: dict):
        """The mixture's BadSamples with the counts of `state` (a state_dict() of a copy of this
        iterator, e.g. the background worker's: it skips and logs the bad samples, and its
        counts come back only in its state). The worker logged the first ones line by line."""
        bad = self.mixture.bad
        counts = (state.get("mixture") or {}).get("bad_samples")
        if counts is not None:
            bad.load_state_dict(counts)
            if bad.log_shared:
                bad.logged = max(bad.logged, min(bad.count, bad.log_first))
        return bad

    @property
    def num_micro_batches(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.dp_size)

    def _replay(self, consumed: int) -> None:
        self.mixture.reset()
        self.mixture.skip(consumed)
        self.consumed_samples = consumed

    def next_global_batch(self) -> list[dict]:
        G, per_rank = self.global_batch_size, self.global_batch_size // self.dp_size
        if self.mixture._sequences != self.consumed_samples:
            raise DataError(f"multimodal batches: the mixture is at sequence {self.mixture._sequences}, "
                            f"the iterator at {self.consumed_samples}; share a mixture with no other reader")
        lo, hi = self.dp_rank * per_rank, (self.dp_rank + 1) * per_rank
        mine = []
        for i in range(G):
            plan = self.mixture.next_plan()  # every rank plans every sequence: index lookups only
            if lo <= i < hi:
                mine.append(self.mixture.render(plan, materialize=True))
        self.consumed_samples += G
        mbs = self.micro_batch_size
        batches = [self.collate(mine[m : m + mbs], self.mixture.renderer) for m in range(0, per_rank, mbs)]
        if self.reset_position_ids or self.reset_attention_mask:
            for m, batch in zip(range(0, per_rank, mbs), batches):
                documents = packed_document_ids(mine[m : m + mbs], batch["tokens"], self.mixture.renderer.tokenizer.eod)
                add_document_fields(batch, documents, self.reset_position_ids, self.reset_attention_mask)
        return batches

    def __iter__(self):
        while True:
            yield self.next_global_batch()

    def state_dict(self) -> dict:
        return {"consumed_samples": self.consumed_samples, "mixture": self.mixture.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        consumed = consumed_samples_of(state, "multimodal batch iterator state")
        mixture_state = state.get("mixture")
        if mixture_state is not None and int(mixture_state.get("sequences", -1)) == consumed:
            self.mixture.load_state_dict(mixture_state)
            self.consumed_samples = consumed
        else:  # no (matching) cursor: replay the plan from the start (index lookups only)
            self._replay(consumed)

    @staticmethod
    def collate(seqs: Sequence[PackedSequence], renderer: SampleRenderer) -> dict:
        from aria_train.nn.image_patches import pack_images

        S = len(seqs[0].tokens) - 1
        buf = torch.from_numpy(np.stack([s.tokens for s in seqs]))
        target = torch.from_numpy(np.stack([s.target for s in seqs]))
        tokens = buf[:, :S].contiguous()
        is_visual = tokens == renderer.img
        crops = [c for s in seqs for c in s.crops]
        num_image_tokens = int(is_visual.sum())
        expected = sum(q for s in seqs for q in s.queries)
        if num_image_tokens != expected:  # pragma: no cover - a packing bug, never bad data
            raise DataError(f"multimodal batch: {num_image_tokens} image tokens for crops with {expected} queries")
        patches, grid = None, []
        if crops:
            patches, grid = pack_images(crops, renderer.image_cfg.patch_size)
            patches = patches.float().contiguous()
        batch = {
            "tokens": tokens,
            "labels": buf[:, 1:].contiguous(),
            "loss_mask": target[:, 1:].float().contiguous(),
            "position_ids": torch.arange(S, dtype=torch.int64).unsqueeze(0).expand(len(seqs), S).contiguous(),
            "patches": patches,
            "grid": [tuple(g) for g in grid],
            "is_visual": is_visual,
            "num_image_tokens": num_image_tokens,
        }
        order = [kind for s in seqs for kind in s.media_order]
        if any(kind != "image" for kind in order):  # IMP's clips / audio: aria_train.nn.media's layout
            videos = [v for s in seqs for v in s.videos]
            audio = [a for s in seqs for a in s.audio]
            batch.update(media_order=order, video_grid=[g for _, g in videos], audio_grid=[g for _, g in audio],
                         video_patches=torch.cat([t for t, _ in videos]).float() if videos else None,
                         audio_patches=torch.cat([a for a, _ in audio]).float() if audio else None)
        return batch


def packed_document_ids(seqs: Sequence[PackedSequence], tokens: torch.Tensor, eod: int) -> torch.Tensor:
    """[B, S] document index of each input slot: a document starts where the packer placed a
    piece (a text document, a sample, the padding) and after every eod token inside a piece."""
    S = tokens.shape[1]
    starts = torch.from_numpy(np.stack([s.starts[:S] for s in seqs]))
    after_eod = document_ids_after_eod(tokens, eod)  # counts eods before each slot
    new_after_eod = torch.zeros_like(starts)
    new_after_eod[:, 1:] = after_eod[:, 1:] != after_eod[:, :-1]
    starts = starts | new_after_eod
    starts[:, 0] = True
    return torch.cumsum(starts.long(), dim=1) - 1
