"""Pretrain an ARIA-class MoE model for one curriculum stage.

    python launch/run.py --nproc_per_node=2 launch/pretrain.py --stage 1   (torchrun, root cause last)
    python launch/pretrain.py --stage 1 --model aria-25b --dry-run

The story of a run: config -> process groups -> run directory -> data -> model (with expert
parallelism applied from outside) -> optimizer -> resume -> train -> checkpoint.

Errors a user can fix (ConfigError, DataError, UserError) print one `error: ...` line (rank 0)
and exit 2; every failing rank also leaves the line in torchrun's error file
(aria_train.errors.record_error), which launch/run.py prints last. Anything else is recorded with
its traceback the way torch.distributed.elastic's `@record` does, and raised.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aria_train.config.cli import parse_args  # noqa: E402  (argparse only: --help stays fast)


def main(argv=None) -> int:
    args = parse_args(argv)
    from aria_train.config import ConfigError
    from aria_train.data.errors import DataError
    from aria_train.errors import UserError, record_error

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    try:
        from aria_train.config.cli import overrides_from_args
        from aria_train.train.run_config import build_config

        if args.dry_run:
            return dry_run(args)
        cfg = build_config(args.stage, args.config, args.model, overrides_from_args(args), world_size=world)
        return train(with_checkpoint_shapes(cfg, world))
    except (ConfigError, DataError, UserError) as error:
        if rank == 0:
            print(f"error: {error}", file=sys.stderr, flush=True)
        record_error(f"error: {error}")
        return 2
    except Exception as error:
        _record_traceback(error)
        raise
    finally:
        # After the except clause, so a handled error's traceback no longer keeps train()'s frames
        # (model, optimizer, process groups) alive: see aria_train.parallel.distributed.shutdown.
        _shutdown_distributed()


def _record_traceback(error: BaseException) -> None:
    """What torch.distributed.elastic's `@record` does for an unexpected error: its message and
    traceback in torchrun's error file, for torchrun's summary and launch/run.py."""
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):
        from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

        ErrorHandler().record_exception(error)


def _shutdown_distributed() -> None:
    if "torch" in sys.modules:  # --help, --dry-run and config errors never start torch.distributed
        from aria_train.parallel import distributed as dist_utils

        dist_utils.shutdown()


def dry_run(args) -> int:
    from aria_train.config.cli import overrides_from_args
    from aria_train.parallel.config import check_ep_divides_world
    from aria_train.plan.report import dry_run_report
    from aria_train.plan.timing import DEFAULT_MFU
    from aria_train.train.run_config import build_config

    cfg = with_checkpoint_shapes(build_config(args.stage, args.config, args.model, overrides_from_args(args)))
    if cfg.stage == 0:  # the dual encoder has no decoder, experts or token budget to plan
        return dry_run_encoder(cfg)
    world = args.world_size or cfg.parallel.min_world_size or 8
    check_ep_divides_world(cfg.parallel.ep_size, world, "--world-size")
    print(dry_run_report(cfg, world, mfu=args.mfu or DEFAULT_MFU))
    return 0


def dry_run_encoder(cfg) -> int:
    """Stage 0: parameters per part of the dual encoder (classifier heads are sized by the data's
    classes, so they are not counted here)."""
    from aria_train.model.build import build_stage_model

    model = build_stage_model(cfg, None)
    for name, part in model.named_children():
        print(f"{name:<18} {sum(p.numel() for p in part.parameters()):>14,d} parameters")
    print(f"{'total':<18} {sum(p.numel() for p in model.parameters()):>14,d} parameters (+ classifier heads)")
    if cfg.train.freeze:  # stage 0 can freeze only the ViT (RunConfig.validate)
        trainable = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("vision_tower."))
        print(f"{'trainable':<18} {trainable:>14,d} parameters (train.freeze={cfg.train.freeze})")
    return 0


def with_checkpoint_shapes(cfg, world_size=None):
    """With checkpoint.init_from_hf: the model, ViT and projector shapes of that checkpoint."""
    if not cfg.checkpoint.init_from_hf:
        return cfg
    from aria_train.convert.hf_init import with_hf_shapes

    return with_hf_shapes(cfg, cfg.checkpoint.init_from_hf).validate(world_size)


def train(cfg) -> int:
    import torch

    from aria_train.accounting import checkpoint_bytes, count_parameters
    from aria_train.checkpoint import Checkpointer, TrainingParts
    from aria_train.config import to_dict
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
    from aria_train.train.run_dir import check_checkpoint_fits, prepare_run_paths
    from aria_train.train.state import TrainState
    from aria_train.train.stopping import StopController
    from aria_train.train.trainer import Trainer

    device = dist_utils.init_distributed(cfg.parallel.backend, cfg.parallel.timeout_minutes)
    stopper = StopController(cfg.train, device)  # preemption signals count from here, not from step 1
    data = None
    try:
        torch.manual_seed(cfg.train.seed)
        groups = init_parallel_groups(cfg.parallel.ep_size)
        paths = prepare_run_paths(cfg, groups)  # refuses another run's directories; probes them
        logger = MetricsLogger(cfg.logging, groups.rank, run_config=to_dict(cfg))
        logger.info(f"stage {cfg.stage} | {cfg.recipe} | preset {cfg.model.preset} | world {groups.world_size} | "
                    f"ep-size {groups.ep_size} | device {device.type}")
        logger.info(paths.describe())
        if cfg.stage != 0:  # stage 0 counts samples per pair (encoder.pairs), not tokens
            logger.info(f"tokens: {describe_budget(cfg)}")
        if cfg.parallel.min_world_size and groups.world_size < cfg.parallel.min_world_size:
            logger.info(f"note: world {groups.world_size} is below parallel.min_world_size "
                        f"{cfg.parallel.min_world_size}, the smallest this layout fits 80 GB GPUs at "
                        f"(see --dry-run --world-size {groups.world_size})")

        if cfg.stage == 0:  # encoder pretraining: pairs of (dataset, objective), one per step
            from aria_train.data.encoder.build import build_encoder_stage_data

            data = build_encoder_stage_data(cfg, groups, logger)
            model = build_stage_model(cfg, data.tokenizer, data.class_counts)
        else:
            data = build_stage_data(cfg, groups, logger)
            model = build_stage_model(cfg, data.tokenizer)
        check_checkpoint_fits(cfg.checkpoint.save, checkpoint_bytes(count_parameters(model, cfg.model)), groups)
        apply_expert_parallel(model, groups)
        model.to_empty(device=device)
        model.init_weights(cfg.train.seed)
        if cfg.has_vision and cfg.vision.init_from:
            source = init_vision_tower(model, cfg.vision.init_from)  # a resumed run's checkpoint overrides it
            logger.info(f"vision tower initialised from {source}")
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

        if cfg.stage == 0:
            from aria_train.train.encoder.callbacks import encoder_callbacks
            from aria_train.train.encoder.trainer import EncoderTrainer

            callbacks = encoder_callbacks(cfg, device, data, checkpointer, stopper)
            trainer = EncoderTrainer(cfg, parts, logger, device, groups, callbacks)
        else:
            callbacks = default_callbacks(cfg, device, checkpointer, stopper, data.valid_factory)
            trainer = Trainer(cfg, parts, logger, device, groups, callbacks)
        history = trainer.fit()
        if history:
            first, last = history[0], history[-1]
            logger.info(f"done: step {trainer.state.step}, first loss {first['loss']:.4f} (step {first['step']}), "
                        f"last loss {last['loss']:.4f} (step {last['step']})")
        optimizer.close()
        logger.close()
        return 0
    finally:
        if data is not None and hasattr(data.train, "close"):
            data.train.close()  # the background loader's worker
        stopper.restore()


if __name__ == "__main__":
    sys.exit(main())
