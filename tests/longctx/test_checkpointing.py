"""The three activation-checkpointing modes give the same loss and gradients, and the config
accepts exactly none | full | selective."""

import pytest
import torch

from aria_train.config import ConfigError
from aria_train.train.run_config import build_config
from aria_train.model.decoder import build_model
from aria_train.train.loss import chunked_cross_entropy_sum


def _loss_and_grads(mode: str):
    cfg = build_config(1, overrides={"model.activation_checkpointing": mode}).model
    torch.manual_seed(0)
    model = build_model(cfg, seed=3)
    model.train()
    tokens = torch.randint(0, cfg.vocab_size, (2, 48))
    out = model(tokens)
    loss = chunked_cross_entropy_sum(out.hidden.flatten(0, 1), model.lm_head.weight, tokens.flatten(),
                                     torch.ones(tokens.numel()), chunk_tokens=32)
    (loss + out.balance_loss + out.z_loss).backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_modes_give_identical_loss_and_gradients():
    ref_loss, ref_grads = _loss_and_grads("none")
    for mode in ("full", "selective"):
        loss, grads = _loss_and_grads(mode)
        assert torch.equal(loss, ref_loss), mode
        for name, grad in ref_grads.items():
            assert torch.equal(grads[name], grad), (mode, name)


def test_config_rejects_unknown_mode():
    with pytest.raises(ConfigError, match="model.activation_checkpointing='partial' is not one of none, full, selective"):
        build_config(1, overrides={"model.activation_checkpointing": "partial"})
