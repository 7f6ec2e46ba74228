"""Functions run on every rank by the tests in this directory (see dist_utils.run_world)."""

from __future__ import annotations

import copy
import math

import torch
import torch.distributed as dist
from torch import nn

from aria_train.config import ConfigError
from aria_train.moe.config import MoEConfig
from aria_train.optim.config import OptimizerConfig
from aria_train.moe.layer import MoELayer
from aria_train.parallel.expert_parallel import apply_expert_parallel
from aria_train.parallel.groups import ParallelGroups, init_parallel_groups

# ---------------------------------------------------------------------------------------------
# groups


def groups_worker(rank: int, world: int) -> None:
    for ep in (1, 2, 4):
        g = init_parallel_groups(ep)
        assert (g.world_size, g.rank, g.ep_size, g.edp_size) == (world, rank, ep, world // ep)
        block = rank // ep
        assert g.ep_ranks == list(range(block * ep, block * ep + ep)), g.ep_ranks
        assert g.edp_ranks == list(range(rank % ep, world, ep)), g.edp_ranks
        assert g.ep_rank == g.ep_ranks.index(rank) and g.edp_rank == g.edp_ranks.index(rank)
        # membership seen by the collectives themselves
        for group, ranks in ((g.ep_group, g.ep_ranks), (g.edp_group, g.edp_ranks), (g.world_group, list(range(world)))):
            t = torch.tensor([float(rank), 1.0])
            dist.all_reduce(t, group=group)
            assert t.tolist() == [float(sum(ranks)), float(len(ranks))], (ep, ranks, t)
        layout = g.expert_layout(16)
        assert (layout.first, layout.end) == (g.ep_rank * 16 // ep, (g.ep_rank + 1) * 16 // ep)
    for bad in (3, 8, 0):
        try:
            init_parallel_groups(bad)
        except ConfigError as exc:
            assert "ep_size" in str(exc) and "\n" not in str(exc)
        else:
            raise AssertionError(f"ep_size={bad} accepted at world {world}")


# ---------------------------------------------------------------------------------------------
# all-to-all dispatcher

H = 16


class _Wrap(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.moe = layer


def _routed(layer: MoELayer, x: torch.Tensor) -> torch.Tensor:
    """MoELayer.forward without the balance losses (which need at least one token)."""
    routing = layer.router(x)
    keep = None
    if layer.cfg.capacity_factor is not None:
        from aria_train.moe.capacity import capacity_keep_mask

        keep = capacity_keep_mask(routing.top_experts, layer.cfg.num_experts, layer.cfg.capacity_factor)
    expert_input, counts, handle = layer.dispatcher.dispatch(x, routing.top_experts, keep)
    out = layer.experts(expert_input, counts)
    return layer.dispatcher.combine(out, routing.top_weights, handle) + layer.shared(x)


def alltoall_worker(rank: int, world: int, cases: list) -> None:
    for ep, case in cases:
        _alltoall_case(rank, world, ep, case)


def _alltoall_case(rank: int, world: int, ep: int, case: str) -> None:
    torch.manual_seed(0)
    num_experts, top_k, tokens = 8, 2, 24
    cfg = MoEConfig(
        num_experts=num_experts, top_k=top_k, num_shared_experts=1, expert_ffn_size=8, balance_group_size=4,
        capacity_factor=1.0 if case == "capacity" else None,
    )
    ref = MoELayer(H, cfg)
    for p in ref.parameters():
        nn.init.normal_(p, std=0.3)
    x_full = torch.randn(tokens, H)
    if case == "skewed":  # every token picks experts 0 and 1, both on EP rank 0
        x_full = x_full.abs() + 0.1
        with torch.no_grad():
            ref.router.weight.fill_(-1.0)
            ref.router.weight[0].fill_(2.0)
            ref.router.weight[1].fill_(1.0)
    grad_out_full = torch.randn(tokens, H)
    # rows per rank: even split, or rank 1 gets none
    if case == "empty_rank":
        sizes = [tokens // (world - 1) if r != 1 else 0 for r in range(world)]
        sizes[0] += tokens - sum(sizes)
    else:
        sizes = [tokens // world] * world
    starts = [sum(sizes[:r]) for r in range(world)]
    mine = slice(starts[rank], starts[rank] + sizes[rank])

    # reference: one rank, all experts, each rank's chunk as its own batch (capacity is per chunk)
    x_ref = x_full.clone().requires_grad_(True)
    # (LocalDispatcher cannot take an empty chunk: skip those, their output is empty anyway)
    ref_out = torch.cat([_routed(ref, x_ref[starts[r] : starts[r] + sizes[r]]) for r in range(world) if sizes[r]])
    (ref_out * grad_out_full).sum().backward()

    groups = init_parallel_groups(ep)
    model = apply_expert_parallel(_Wrap(copy.deepcopy(ref)), groups)
    layer = model.moe
    layout = groups.expert_layout(num_experts)
    first, last = layout.first, layout.end
    assert (layer.experts.first_expert, layer.experts.num_local_experts) == (first, last - first)
    layer.zero_grad()
    x = x_full[mine].clone().requires_grad_(True)
    out = layer(x).hidden if case in ("even", "capacity", "skewed") and sizes[rank] > 0 else _routed(layer, x)
    (out * grad_out_full[mine]).sum().backward()

    tol = dict(atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out, ref_out[mine].detach(), **tol)
    torch.testing.assert_close(x.grad, x_ref.grad[mine], **tol)
    for name, p in layer.named_parameters():
        grad = p.grad.clone()
        ref_grad = ref.get_parameter(name).grad
        if name.startswith("experts."):
            dist.all_reduce(grad, group=groups.edp_group)  # other EP blocks hold the same experts
            ref_grad = ref_grad[first:last]
        else:
            dist.all_reduce(grad)
        torch.testing.assert_close(grad, ref_grad, **tol, msg=lambda m: f"{name}: {m}")
    if case == "skewed" and groups.ep_rank != 0:
        assert float(layer.experts.w_down.grad.abs().sum()) == 0.0


# ---------------------------------------------------------------------------------------------
# optimizers: a single-rank torch.optim.AdamW reference for the same global batch


from dist_utils import make_batches, micro_loss, tiny_config  # noqa: E402

from aria_train.model.decoder import build_model  # noqa: E402
from aria_train.optim.flat_state import FlatShard  # noqa: E402

STEPS, N_MICRO, BATCH, SEQ = 5, 2, 2, 8


def opt_model_config():
    """The tiny preset with a smaller vocabulary (the embedding and head are most of the tiny
    preset's parameters), to keep the multi-rank optimizer tests quick on 2 cores."""
    cfg = tiny_config()
    cfg.vocab_size = 256
    return cfg
LRS = [1e-2, 8e-3, 6e-3, 4e-3, 2e-3]
# Largest parameter difference from the single-rank reference after 5 steps. The grouped expert
# GEMM (torch._grouped_mm) rounds a row depending on how many rows its expert has in the call: an
# EP rank multiplies the rows of every source rank's micro-batch at once, the reference one
# micro-batch at a time, so the rounding differs by ~1e-7 relative, which Adam turns into up to
# ~3.5e-5 on the few embedding elements whose gradients are near eps.
MAX_PARAM_DIFF = 5e-5


def opt_config(clip_grad: float = 0.5, eps: float = 1e-6) -> OptimizerConfig:
    """Clip at 0.5 so clipping is active (norms are 1.9..3.5); decay on so the matrix/norm rule
    matters. eps 1e-6 rather than 1e-8: with eps 1e-8 Adam turns the ~1e-6 relative rounding
    difference of a differently-summed grad norm (or of a cross-rank gradient sum) into ~4e-5
    parameter differences on a few elements whose gradients are ~1e-8."""
    return OptimizerConfig(lr=1e-2, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=eps, clip_grad=clip_grad)


def reference_run(world: int, seed: int = 3, ocfg: OptimizerConfig = None, fused: bool = False):
    """torch.optim.AdamW (its fused kernel if `fused`, as ReplicatedAdamW runs it) + clip_grad_norm_
    on one rank over world x N_MICRO micro-batches per step. Returns (model, torch optimizer, grad
    norms)."""
    cfg, ocfg = opt_model_config(), ocfg or opt_config()
    model = build_model(cfg, seed=seed)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": ocfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=ocfg.lr, betas=(ocfg.beta1, ocfg.beta2), eps=ocfg.eps, fused=fused,
    )
    batches = make_batches(STEPS, world, N_MICRO, BATCH, SEQ, cfg.vocab_size)
    global_tokens = world * N_MICRO * BATCH * SEQ
    norms = []
    for step in range(STEPS):
        opt.zero_grad()
        for r in range(world):
            for m in range(N_MICRO):
                tokens, labels = batches[step][r][m]
                micro_loss(model, tokens, labels, global_tokens, world, N_MICRO).backward()
        max_norm = ocfg.clip_grad if ocfg.clip_grad > 0 else float("inf")  # ours: <= 0 is off
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)))
        for group in opt.param_groups:
            group["lr"] = LRS[step]
        opt.step()
    return model, opt, norms


def train_run(model, opt, rank: int, world: int):
    """The trainer's protocol on this rank's share of the same batches. Returns grad norms."""
    batches = make_batches(STEPS, world, N_MICRO, BATCH, SEQ, model.cfg.vocab_size)
    global_tokens = world * N_MICRO * BATCH * SEQ
    norms = []
    for step in range(STEPS):
        opt.zero_grad()
        for m in range(N_MICRO):
            opt.begin_microbatch(is_last=m == N_MICRO - 1)
            tokens, labels = batches[step][rank][m]
            micro_loss(model, tokens, labels, global_tokens, world, N_MICRO).backward()
        opt.finish_grad_sync()
        norms.append(opt.step(LRS[step]))
    return norms


def build_sharded_model(groups: ParallelGroups, seed: int = 3):
    """Build on meta, apply EP, materialise, init: exactly this rank's slice of the 1-rank model."""
    model = build_model(opt_model_config(), device="meta")
    apply_expert_parallel(model, groups)
    model.to_empty(device="cpu")
    model.init_weights(seed)
    return model


def full_state(opt) -> dict:
    """Gathers every rank's FlatShards into full tensors: {name: {key: tensor of global shape}}."""
    local = {
        name: {key: (piece.global_shape, piece.offset, piece.local.detach().clone()) for key, piece in per.items()}
        for name, per in opt.sharded_state_dict()["state"].items()
    }
    everyone = [None] * dist.get_world_size() if dist.is_initialized() else [local]
    if dist.is_initialized():
        dist.all_gather_object(everyone, local)
    out: dict = {}
    covered: dict = {}
    for rank_state in everyone:
        for name, per in rank_state.items():
            for key, (shape, offset, values) in per.items():
                flat = out.setdefault(name, {}).setdefault(key, torch.full((math.prod(shape),), float("nan")))
                flat[offset : offset + values.numel()] = values
                covered[(name, key)] = covered.get((name, key), 0) + values.numel()
                out[name][key] = flat
    return {name: {key: t.view(_shape(everyone, name)) for key, t in per.items()} for name, per in out.items()}


def _shape(everyone, name):
    for rank_state in everyone:
        if name in rank_state:
            return next(iter(rank_state[name].values()))[0]
    raise KeyError(name)


def as_flat_state(full: dict, step: int) -> dict:
    """Full tensors -> an aria-flat-v1 state dict with one whole piece per tensor."""
    return {
        "format": "aria-flat-v1",
        "step": step,
        "state": {
            name: {key: FlatShard(tuple(t.shape), 0, t.reshape(-1)) for key, t in per.items()}
            for name, per in full.items()
        },
    }


def save_reference(world: int, path: str) -> dict:
    """Runs the single-rank reference once (in the test process) and saves what workers compare."""
    ref_model, ref_opt, ref_norms = reference_run(world)
    ref = {
        "norms": ref_norms,
        "params": {n: p.detach().clone() for n, p in ref_model.named_parameters()},
        "exp_avg": {n: ref_opt.state[p]["exp_avg"].clone() for n, p in ref_model.named_parameters()},
        "exp_avg_sq": {n: ref_opt.state[p]["exp_avg_sq"].clone() for n, p in ref_model.named_parameters()},
        "total_params": sum(p.numel() for p in ref_model.parameters()),
    }
    torch.save(ref, path)
    return ref


def optimizer_worker(rank: int, world: int, cases: list, out_dir: str, bucket_mb: float) -> None:
    for ep, kind in cases:
        _optimizer_case(rank, world, ep, kind, out_dir, bucket_mb)


def _optimizer_case(rank: int, world: int, ep: int, kind: str, out_dir: str, bucket_mb: float) -> None:
    from aria_train.optim.build import build_optimizer
    from aria_train.optim.replicated import ReplicatedAdamW
    from aria_train.optim.zero1 import Zero1Optimizer

    ref = torch.load(f"{out_dir}/ref.pt")
    groups = init_parallel_groups(ep)
    model = build_sharded_model(groups)
    ocfg = opt_config()
    ocfg.zero1 = kind == "zero1"
    opt = build_optimizer(model, ocfg, groups, None, bucket_size_mb=bucket_mb)
    assert isinstance(opt, Zero1Optimizer if kind == "zero1" else ReplicatedAdamW), type(opt)
    norms = train_run(model, opt, rank, world)

    # norms: every parameter counted once
    for step, (a, b) in enumerate(zip(norms, ref["norms"])):
        assert math.isclose(a, b, rel_tol=1e-5), (step, a, b)
    # parameters after 5 steps
    layout = groups.expert_layout(model.cfg.moe.num_experts)
    first, last = layout.first, layout.end
    max_diff, diff_sum, count = 0.0, 0.0, 0
    for name, p in model.named_parameters():
        expected = ref["params"][name]
        if ".experts." in name:
            expected = expected[first:last]
        diff = (p.detach() - expected).abs()
        max_diff = max(max_diff, float(diff.max()))
        diff_sum, count = diff_sum + float(diff.sum()), count + diff.numel()
    mean_diff = diff_sum / count
    # the optimizer state, gathered to full tensors, is the reference AdamW's state
    full = full_state(opt)
    max_state_diff = 0.0
    for name, expected_p in ref["params"].items():
        for key, expected in (("master", expected_p), ("exp_avg", ref["exp_avg"][name]),
                              ("exp_avg_sq", ref["exp_avg_sq"][name])):
            got = full[name][key]
            assert got.shape == expected.shape and not torch.isnan(got).any(), (name, key)
            if key == "master":  # the parameters themselves: same tolerance as above
                assert float((got - expected).abs().max()) < MAX_PARAM_DIFF, name
            else:  # moments, relative to the tensor's largest
                max_state_diff = max(max_state_diff, float((got - expected).abs().max() / expected.abs().max()))
    report = torch.tensor([max_diff, max_state_diff, float(opt.state_bytes()), mean_diff], dtype=torch.float64)
    reports = [torch.zeros_like(report) for _ in range(world)]
    dist.all_gather(reports, report)
    if rank == 0:
        torch.save(
            {
                "max_param_diff": max(float(r[0]) for r in reports),
                "max_state_rel_diff": max(float(r[1]) for r in reports),
                "mean_param_diff": max(float(r[3]) for r in reports),
                "state_bytes": [int(r[2]) for r in reports],
                "norms": norms,
                "buckets": len(opt.buckets) if kind == "zero1" else 0,
            },
            f"{out_dir}/report_{ep}_{kind}.pt",
        )
    # Adam turns ~1e-7 relative differences of cross-rank gradient sums into up to ~1e-5 on the
    # few elements whose gradients are near eps; a real bug (decay, bias correction, a missing
    # shard) moves every element, which the mean catches
    assert max_diff < MAX_PARAM_DIFF, max_diff
    assert mean_diff < 1e-7, mean_diff
    assert max_state_diff < 1e-4, max_state_diff

    # reload: a fresh optimizer of the other kind / other buckets, loaded from the full state,
    # holds the same parameters and state
    fresh_model = build_sharded_model(groups, seed=99)
    if kind == "zero1":
        fresh = Zero1Optimizer(fresh_model, opt_config(), groups, bucket_size_mb=bucket_mb * 3.7)
    else:
        fresh = ReplicatedAdamW(fresh_model, opt_config(), groups)
    fresh.load_sharded_state_dict(as_flat_state(full, opt.step_count))
    for name, p in fresh_model.named_parameters():
        torch.testing.assert_close(p, model.get_parameter(name), atol=0, rtol=0)
    for name, per in fresh.sharded_state_dict()["state"].items():
        for key, piece in per.items():
            expected = full[name][key].reshape(-1)[piece.offset : piece.offset + piece.local.numel()]
            torch.testing.assert_close(piece.local, expected, atol=0, rtol=0)
    assert fresh.step_count == STEPS


def unused_param_worker(rank: int, world: int) -> None:
    """Rank 1 never uses `b`, and the two ranks finish their buckets in different orders: the
    collectives still match and the result is the summed gradient."""
    from aria_train.optim.zero1 import Zero1Optimizer

    groups = init_parallel_groups(1)
    torch.manual_seed(0)
    model = nn.ModuleDict({"a": nn.Linear(8, 8, bias=False), "b": nn.Linear(8, 8, bias=False),
                           "c": nn.Linear(8, 8, bias=False)})
    ref = copy.deepcopy(model)
    ocfg = OptimizerConfig(lr=1e-2, weight_decay=0.0, clip_grad=0.0)
    opt = Zero1Optimizer(model, ocfg, groups, bucket_size_mb=1e-4)  # one bucket per matrix
    assert len(opt.buckets) == 3
    x = torch.ones(2, 8)

    def loss(m, r):
        if r == 0:
            return m["c"](m["b"](m["a"](x))).sum()
        return m["c"](m["a"](x) * 2).sum()  # no b

    opt.zero_grad()
    opt.begin_microbatch(is_last=True)
    loss(model, rank).backward()
    opt.finish_grad_sync()
    for r in range(world):
        loss(ref, r).backward()
    for name, p in ref.named_parameters():
        bucket, entry = opt._bucket_of[id(model.get_parameter(name))]
        s0, size = bucket.shard_start, bucket.shard_size
        expected = torch.zeros(bucket.padded)
        expected[entry.start : entry.start + entry.numel] = p.grad.reshape(-1)
        torch.testing.assert_close(bucket.grad_shard, expected[s0 : s0 + size])
    opt.step(1e-2)


# ---------------------------------------------------------------------------------------------
# shutdown


def gloo_worker_threads() -> int:
    """Threads of this process running a gloo process group's work loop (Linux /proc)."""
    import os

    names = (open(f"/proc/self/task/{task}/comm").read().strip() for task in os.listdir("/proc/self/task"))
    return sum(name == "pt_gloo_runloop" for name in names)


def shutdown_worker(rank: int, world: int, port: int, queue) -> None:
    """A ZeRO-1 step over every group of the layout, the objects dropped WITHOUT close(), then
    aria_train's shutdown: every gloo work-loop thread must be joined before interpreter exit
    (one left running can abort the process when it frees a finished collective's tensors)."""
    import datetime

    from aria_train.optim.zero1 import Zero1Optimizer
    from aria_train.parallel.distributed import shutdown

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    groups = init_parallel_groups(1)
    model = nn.Linear(8, 8)
    opt = Zero1Optimizer(model, OptimizerConfig(), groups, bucket_size_mb=1e-4)
    opt.zero_grad()
    opt.begin_microbatch(is_last=True)
    model(torch.ones(2, 8)).sum().backward()
    opt.finish_grad_sync()
    opt.step(1e-3)
    running = gloo_worker_threads()
    del opt, model, groups
    shutdown()
    queue.put((rank, running, gloo_worker_threads()))
