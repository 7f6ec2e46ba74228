"""Stage 0's objectives, each returning this rank's SHARE of the global-batch loss (summed over
ranks it is the global loss; aria_train.optim.protocol sums gradients over ranks).

Symmetric InfoNCE (CLIP) over the GLOBAL batch of N = W x b pairs. With unit vectors u_i (image)
and v_j (text) and s = exp(clamp(logit_scale, 0, log(max_logit_scale))):

    L = 1 / (2 sum_i w_i) * sum_i w_i [ -log softmax_j(s u_i.v_j)[i] - log softmax_j(s v_i.u_j)[i] ]

over all N rows i and columns j of the global batch; w_i (1, or 0 for a sample whose image did
not decode) drops a row from the loss but keeps it as a negative. Rank r computes its own b
rows of both directions against the gathered columns; the gather passes gradients back to the
rank that owns each column (aria_train.parallel.gather), so the summed gradients are those of L
on one rank over the concatenated batch (tests/encoder/test_global_infonce.py).

Softmax classification: sum over this rank's samples of the cross-entropy, over the global
sample weight, likewise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from aria_train.parallel.gather import all_gather_rows, all_gather_with_grad


@dataclass
class ObjectiveOutput:
    loss_share: torch.Tensor  # [] this rank's share of the global loss (with grad)
    correct: torch.Tensor  # [] this rank's rows ranked right (top-1), detached float64
    rows: torch.Tensor  # [] this rank's weighted rows, detached float64


def logit_scale_value(logit_scale: torch.Tensor, max_logit_scale: float) -> torch.Tensor:
    """exp of the log-parametrised temperature, clamped to [1, max_logit_scale] as CLIP does
    (CLIP clamps the parameter after each step; here the forward clamps, so the fp32 master
    weights of ZeRO-1 never disagree with what the model uses)."""
    return logit_scale.clamp(0.0, math.log(max_logit_scale)).exp().reshape(())


def global_infonce(
    image_BD: torch.Tensor,
    text_BD: torch.Tensor,
    logit_scale: torch.Tensor,
    max_logit_scale: float = 100.0,
    weights_B: Optional[torch.Tensor] = None,
    group: Optional[Any] = None,
    distributed: bool = True,
) -> ObjectiveOutput:
    """image_BD, text_BD: this rank's b embeddings (not yet normalised); logit_scale: the
    learned log scale (any shape with one element); weights_B: 1/0 per row (default all 1).
    All ranks of `group` must hold the same b."""
    b = image_BD.shape[0]
    weights_B = torch.ones(b, dtype=torch.float32, device=image_BD.device) if weights_B is None else weights_B.float()
    image_BD = F.normalize(image_BD.float(), dim=-1)
    text_BD = F.normalize(text_BD.float(), dim=-1)
    image_ND = all_gather_with_grad(image_BD, group, distributed)
    text_ND = all_gather_with_grad(text_BD, group, distributed)
    total_weight = all_gather_rows(weights_B, group, distributed).sum().clamp(min=1.0)
    rank = _rank(group, distributed) if image_ND.shape[0] > b else 0  # rows of this rank in the gather
    targets_B = torch.arange(b, device=image_BD.device) + rank * b
    scale = logit_scale_value(logit_scale, max_logit_scale)
    image_to_text_BN = scale * image_BD @ text_ND.T
    text_to_image_BN = scale * text_BD @ image_ND.T
    per_row_B = (F.cross_entropy(image_to_text_BN, targets_B, reduction="none")
                 + F.cross_entropy(text_to_image_BN, targets_B, reduction="none"))
    loss_share = (weights_B * per_row_B).sum() / (2.0 * total_weight)
    with torch.no_grad():
        correct = (weights_B * (image_to_text_BN.argmax(dim=-1) == targets_B).float()).sum()
    return ObjectiveOutput(loss_share, correct.double(), weights_B.sum().double())


def softmax_classification(
    logits_BC: torch.Tensor,
    labels_B: torch.Tensor,
    weights_B: Optional[torch.Tensor] = None,
    group: Optional[Any] = None,
    distributed: bool = True,
) -> ObjectiveOutput:
    """logits_BC [b, C], labels_B [b] int64 -> this rank's share of the weighted mean
    cross-entropy over the global batch."""
    b = logits_BC.shape[0]
    weights_B = torch.ones(b, dtype=torch.float32, device=logits_BC.device) if weights_B is None else weights_B.float()
    total_weight = all_gather_rows(weights_B, group, distributed).sum().clamp(min=1.0)
    per_row_B = F.cross_entropy(logits_BC.float(), labels_B, reduction="none")
    loss_share = (weights_B * per_row_B).sum() / total_weight
    with torch.no_grad():
        correct = (weights_B * (logits_BC.argmax(dim=-1) == labels_B).float()).sum()
    return ObjectiveOutput(loss_share, correct.double(), weights_B.sum().double())


def _rank(group: Optional[Any], distributed: bool) -> int:
    import torch.distributed as dist

    if not distributed or not dist.is_available() or not dist.is_initialized():
        return 0
    return dist.get_rank(group)
