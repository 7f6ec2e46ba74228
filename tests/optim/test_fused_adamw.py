"""ReplicatedAdamW runs torch's fused AdamW on CPU as on CUDA (issue 15, defect 1): its step
counters live on the parameters' device, and the fused update equals torch's unfused one."""

import torch

from aria_train.model.config import ModelConfig
from aria_train.model.decoder import build_model
from aria_train.moe.config import MoEConfig
from aria_train.optim.config import OptimizerConfig
from aria_train.optim.flat_state import collect_params
from aria_train.optim.replicated import ReplicatedAdamW

OPT = OptimizerConfig(lr=1e-2, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8, clip_grad=0.0)
LRS = [1e-2, 8e-3, 6e-3, 4e-3]


def _model(seed: int = 0):
    moe = MoEConfig(num_experts=4, top_k=2, expert_ffn_size=8, balance_group_size=2)
    return build_model(ModelConfig(vocab_size=64, hidden_size=16, num_layers=2, num_heads=2, head_dim=8, moe=moe),
                       seed=seed)


def _loss(model, step: int) -> torch.Tensor:
    tokens = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(step))
    out = model(tokens)
    return model.logits(out.hidden).float().logsumexp(-1).mean() + out.balance_loss + out.z_loss


def _unfused_reference(model) -> torch.optim.AdamW:
    groups: dict = {}
    for info in collect_params(model, OPT):
        groups.setdefault(info.weight_decay, []).append(info.param)
    return torch.optim.AdamW([{"params": ps, "weight_decay": wd} for wd, ps in groups.items()], lr=OPT.lr,
                             betas=(OPT.beta1, OPT.beta2), eps=OPT.eps, foreach=False, fused=False)


def test_replicated_adamw_uses_the_fused_kernel_with_step_on_the_parameter_device():
    model = _model()
    opt = ReplicatedAdamW(model, OPT)
    assert all(group["fused"] for group in opt.optimizer.param_groups)
    for param in model.parameters():
        step = opt.optimizer.state[param]["step"]
        assert step.device == param.device and step.dtype == torch.float32
    # a resumed optimizer keeps them there too
    opt.load_sharded_state_dict(opt.sharded_state_dict())
    for param in model.parameters():
        assert opt.optimizer.state[param]["step"].device == param.device


def test_fused_update_equals_the_unfused_one():
    """The same gradients into both, step after step: parameters, moments and step counters agree
    to fp32 rounding (the fused kernel orders a few operations differently)."""
    fused_model, ref_model = _model(), _model()
    opt = ReplicatedAdamW(fused_model, OPT)
    ref = _unfused_reference(ref_model)
    worst = 0.0
    for step, lr in enumerate(LRS):
        _loss(fused_model, step).backward()
        for p, q in zip(fused_model.parameters(), ref_model.parameters()):
            q.grad = p.grad.clone()
        opt.step(lr)
        opt.zero_grad()
        for group in ref.param_groups:
            group["lr"] = lr
        ref.step()
        ref.zero_grad()
        for (name, p), q in zip(fused_model.named_parameters(), ref_model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-8, msg=name)
            for key in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(opt.optimizer.state[p][key], ref.state[q][key], rtol=1e-6, atol=1e-12)
            assert float(opt.optimizer.state[p]["step"]) == float(ref.state[q]["step"]) == step + 1
            worst = max(worst, float((p - q).detach().abs().max()))
    print(f"max |fused - unfused| parameter difference over {len(LRS)} steps: {worst:.3g}")
