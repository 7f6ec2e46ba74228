"""Pretrain an ARIA-class MoE model for one curriculum stage.

    torchrun --nproc_per_node=2 launch/pretrain.py --stage 1
    python launch/pretrain.py --stage 1 --model aria-25b --dry-run

The story of a run: config -> process groups -> data -> model (with expert parallelism applied
from outside) -> optimizer -> resume -> train -> checkpoint.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aria_train.config import ConfigError  # noqa: E402
from aria_train.config.loader import to_dict  # noqa: E402
from aria_train.train.run_config import build_config  # noqa: E402
from aria_train.config.cli import overrides_from_args, parse_args  # noqa: E402
from aria_train.data.errors import DataError  # noqa: E402
from aria_train.errors import UserError  # noqa: E402


def main(argv=None) -> int:
    args = parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    try:
        if args.dry_run:
            return dry_run(args)
        cfg = build_config(args.stage, args.config, args.model, overrides_from_args(args), world_size=world)
        return train(with_checkpoint_shapes(cfg, world))
    except (ConfigError, DataError, UserError) as error:
        if rank == 0:
            print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    finally:
        # After the except clause, so a handled error's traceback no longer keeps train()'s frames
        # (model, optimizer, process groups) alive: see aria_train.parallel.distributed.shutdown.
        _shutdown_distributed()


def _shutdown_distributed() -> None:
    if "torch" in sys.modules:  # --help, --dry-run and config errors never start torch.distributed
        from aria_train.parallel import distributed as dist_utils

        dist_utils.shutdown()


def dry_run(args) -> int:
    from aria_train.parallel.config import check_ep_divides_world
    from aria_train.plan.report import dry_run_report
    from aria_train.plan.timing import DEFAULT_MFU

    cfg = with_checkpoint_shapes(build_config(args.stage, args.config, args.model, overrides_from_args(args)))
    world = args.world_size or cfg.parallel.min_world_size or 8
    check_ep_divides_world(cfg.parallel.ep_size, world, "--world-size")
    print(dry_run_report(cfg, world, mfu=args.mfu or DEFAULT_MFU))
    return 0


def with_checkpoint_shapes(cfg, world_size=None):
    """With checkpoint.init_from_hf: the model, ViT and projector shapes of that checkpoint."""
    if not cfg.checkpoint.init_from_hf:
        return cfg
    from aria_train.convert.hf_init import with_hf_shapes

    return with_hf_shapes(cfg, cfg.checkpoint.init_from_hf).validate(world_size)


def train(cfg) -> int:
    import torch

    from aria_train.checkpoint import Checkpointer, TrainingParts
    from aria_train.convert.hf_init import load_hf_weights
    from aria_train.convert.hf_multimodal import init_vision_tower
    from aria_train.data.stage_data import build_stage_data
    from aria_train.model.build import build_stage_model
    from aria_train.model.freeze import freeze_parameters
    from aria_train.optim.build import build_optimizer
    from aria_train.parallel import distributed as dist_utils
    from aria_train.parallel.expert_parallel import apply_expert_parallel
    from aria_train.parallel.groups import init_parallel_groups
    from aria_train.train.callbacks import default_callbacks
    from aria_train.train.metrics import MetricsLogger
    from aria_train.train.budget import describe_budget
    from aria_train.train.run_config import describe_run
    from aria_train.train.state import TrainState
    from aria_train.train.stopping import StopController
    from aria_train.train.trainer import Trainer

    device = dist_utils.init_distributed(cfg.parallel.backend, cfg.parallel.timeout_minutes)
    stopper = StopController(cfg.train, device)  # preemption signals count from here, not from step 1
    data = None
    try:
        torch.manual_seed(cfg.train.seed)
        groups = init_parallel_groups(cfg.parallel.ep_size)
        logger = MetricsLogger(cfg.logging, groups.rank, run_config=to_dict(cfg))
        logger.info(f"stage {cfg.stage} | {cfg.recipe} | preset {cfg.model.preset} | world {groups.world_size} | "
                    f"ep-size {groups.ep_size} | device {device.type}")
        logger.info(f"tokens: {describe_budget(cfg)}")
        if cfg.parallel.min_world_size and groups.world_size < cfg.parallel.min_world_size:
            logger.info(f"note: world {groups.world_size} is below parallel.min_world_size "
                        f"{cfg.parallel.min_world_size}, the smallest this layout fits 80 GB GPUs at "
                        f"(see --dry-run --world-size {groups.world_size})")

        data = build_stage_data(cfg, groups, logger)

        model = build_stage_model(cfg, data.tokenizer)
        apply_expert_parallel(model, groups)
        model.to_empty(device=device)
        model.init_weights(cfg.train.seed)
        if cfg.multimodal and cfg.vision.init_from:
            init_vision_tower(model, cfg.vision.init_from)  # a resumed run's checkpoint overrides it
            logger.info(f"vision tower initialised from {cfg.vision.init_from}")
        if cfg.checkpoint.init_from_hf:  # so does it override this
            loaded = load_hf_weights(model, cfg.checkpoint.init_from_hf)
            logger.info(f"weights from transformers checkpoint {cfg.checkpoint.init_from_hf}: {loaded}")
        if cfg.train.freeze:
            frozen = freeze_parameters(model, cfg.train.freeze)
            logger.info(f"frozen ({', '.join(cfg.train.freeze)}): {frozen:,} parameters on this rank take no gradient")
        precision = cfg.train.resolved_precision(device.type)
        optimizer = build_optimizer(model, cfg.optimizer, groups, bucket_size_mb=cfg.parallel.bucket_size_mb,
                                    param_dtype=torch.bfloat16 if precision == "bf16" else None)
        logger.info(f"precision {precision} | optimizer state per rank: {optimizer.state_bytes() / 2**20:.2f} MiB")

        parts = TrainingParts(model, optimizer, TrainState(), data.train)
        checkpointer = Checkpointer(cfg.checkpoint, groups, describe_run(cfg), logger)
        checkpointer.maybe_resume(parts)

        callbacks = default_callbacks(cfg, device, checkpointer, stopper, data.valid_factory)
        trainer = Trainer(cfg, parts, logger, device, groups, callbacks)
        history = trainer.fit()
        if history:
            logger.info(f"done: step {trainer.state.step}, first loss {history[0]['loss']:.4f}, "
                        f"last loss {history[-1]['loss']:.4f}")
        optimizer.close()
        logger.close()
        return 0
    finally:
        if data is not None and hasattr(data.train, "close"):
            data.train.close()  # the background loader's worker
        stopper.restore()


if __name__ == "__main__":
    sys.exit(main())
