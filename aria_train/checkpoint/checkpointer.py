"""Saving and resuming a run with torch.distributed.checkpoint (DCP).

    checkpointer = Checkpointer(cfg, groups, logger)        # every rank, after the groups exist
    state = checkpointer.maybe_resume(model, optimizer, train_batches)   # TrainState or None
    ... trainer calls checkpointer.save(trainer) when due, checkpointer.finalize(trainer) at the end

Every rank writes its part of one DCP checkpoint (see aria_train.checkpoint.state for the keys,
aria_train.checkpoint.layout for the directory rules). Keys name parameters and GLOBAL expert
indices, never ranks, so a checkpoint loads at any world size and expert-parallel size: DCP reads
for each rank exactly the experts and optimizer ranges it holds in the new layout.

With `checkpoint.async_save` the state is copied to CPU memory in the training thread and written
by a background thread (DCP over a dedicated gloo group), so training goes on meanwhile; the next
save or `finalize` waits for it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import yaml

from aria_train.checkpoint import layout
from aria_train.checkpoint import state as ckpt_state
from aria_train.errors import UserError

class Checkpointer:
    def __init__(self, cfg, groups, logger=None):
        self.cfg = cfg
        self.ckpt = cfg.checkpoint
        self.groups = groups
        self.logger = logger
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        self.ep_size = getattr(groups, "ep_size", 1) if groups is not None else 1
        # DCP's own collectives go over a gloo group of their own: CPU-side, and safe to run from
        # the background thread while training uses the default group.
        self.pg = dist.new_group(backend="gloo") if self.distributed else None
        self._thread: Optional[threading.Thread] = None
        self._thread_error: Optional[BaseException] = None
        self.last_saved_step: Optional[int] = None
        self.loaded_from: Optional[Path] = None
        self.loaded_metadata: Optional[dict] = None

    # ---- logging / sync helpers -----------------------------------------------------------
    def _info(self, message: str) -> None:
        if self.logger is not None:
            self.logger.info(message)
        elif self.rank == 0:
            print(message, flush=True)

    def _barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self.pg)

    # ---- saving ---------------------------------------------------------------------------
    def save(self, trainer) -> None:
        """Writes a checkpoint of the trainer's current state (every rank calls it)."""
        if not self.ckpt.save:
            return
        step = int(trainer.state.step)
        if step == self.last_saved_step:
            return
        self.wait()  # one save in flight at a time
        root = Path(self.ckpt.save)
        start = time.perf_counter()
        error = None
        if self.rank == 0:
            try:
                self._prepare_dir(root, step)
            except OSError as exc:
                error = f"cannot write checkpoint under {root}: {exc}"
        self._agree(error)  # also: the directory exists before anyone writes into it

        entries = self._state_to_save(trainer)
        metadata = self._metadata(trainer)
        if self.ckpt.async_save:
            entries = ckpt_state.clone_state(entries)
            self._thread_error = None
            self._thread = threading.Thread(
                target=self._write_guarded, args=(entries, root, step, metadata, start),
                name=f"checkpoint-save-{step}", daemon=True,
            )
            self._thread.start()
        else:
            self._write(entries, root, step, metadata, start)
        self.last_saved_step = step

    def _prepare_dir(self, root: Path, step: int) -> None:
        import shutil

        root.mkdir(parents=True, exist_ok=True)
        partial = layout.partial_dir(root, step)
        if partial.exists():  # left by an interrupted save of the same iteration
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        with open(partial / layout.CONFIG_FILE, "w") as handle:
            yaml.safe_dump(self._config_dict(), handle, sort_keys=False)

    def _agree(self, error: Optional[str]) -> None:
        """Rank 0's outcome, on every rank: a UserError everywhere if rank 0 failed."""
        if self.distributed:
            box = [error]
            dist.broadcast_object_list(box, src=0, group=self.pg)
            error = box[0]
        if error:
            raise UserError(error)

    def _agree_all(self, error: Optional[str]) -> None:
        """Raises on every rank the first error any rank had."""
        if self.distributed:
            errors: list = [None] * self.world_size
            dist.all_gather_object(errors, error, group=self.pg)
            error = next((e for e in errors if e), None)
        if error:
            raise UserError(error)

    def _write_guarded(self, *args) -> None:
        try:
            self._write(*args)
        except BaseException as error:  # re-raised by wait()
            self._thread_error = error

    def _write(self, entries: dict, root: Path, step: int, metadata: dict, start: float) -> None:
        partial = layout.partial_dir(root, step)
        with ckpt_state.quiet_sharded_tensor():
            dcp.save(entries, storage_writer=dcp.FileSystemWriter(str(partial)), process_group=self.pg,
                     no_dist=not self.distributed)
        self._barrier()  # every rank's data is on disk
        error, final = None, None
        if self.rank == 0:
            try:
                final = layout.commit(root, step, metadata, self.ckpt.keep_last)
            except OSError as exc:
                error = f"cannot commit checkpoint {layout.partial_dir(root, step)}: {exc}"
        self._agree(error)
        if final is not None:
            self._info(f"saved checkpoint {final} ({time.perf_counter() - start:.1f} s"
                       f"{', async' if self.ckpt.async_save else ''})")

    def wait(self) -> None:
        """Blocks until the background save (if any) is written; re-raises its error."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        if self._thread_error is not None:
            error, self._thread_error = self._thread_error, None
            if isinstance(error, UserError):
                raise error
            raise RuntimeError(f"asynchronous checkpoint save failed: {error}") from error

    def finalize(self, trainer=None) -> None:
        """End of training: waits for an in-flight save; every rank leaves together."""
        self.wait()
        self._barrier()

    def _state_to_save(self, trainer) -> dict[str, Any]:
        entries: dict[str, Any] = {}
        entries.update(ckpt_state.model_state(trainer.model))
        optim_entries, _ = ckpt_state.optimizer_state(trainer.optimizer)
        entries.update(optim_entries)
        entries[ckpt_state.TRAIN_STATE_KEY] = ckpt_state.encode_json(
            {"step": int(trainer.state.step), "consumed_samples": int(trainer.state.consumed_samples)}
        )
        batches = getattr(trainer, "train_batches", None)
        if batches is not None and hasattr(batches, "state_dict"):
            entries[ckpt_state.DATA_STATE_KEY] = ckpt_state.encode_pickle(batches.state_dict())
        entries[ckpt_state.rng_key(self.rank)] = ckpt_state.capture_rng()
        return entries

    def _config_dict(self) -> dict:
        from aria_train.config.loader import to_dict

        return to_dict(self.cfg)

    def _metadata(self, trainer) -> dict:
        model_cfg = self.cfg.model
        return {
            "format": layout.FORMAT_NAME,
            "format_version": layout.FORMAT_VERSION,
            "iteration": int(trainer.state.step),
            "consumed_samples": int(trainer.state.consumed_samples),
            "stage": int(self.cfg.stage),
            "rope_base": float(model_cfg.rope_base),
            "model_preset": model_cfg.preset,
            "num_experts": int(model_cfg.moe.num_experts),
            "world_size": self.world_size,
            "ep_size": int(self.ep_size),
            "optimizer": type(trainer.optimizer).__name__,
            "torch_version": torch.__version__,
        }

    # ---- resuming -------------------------------------------------------------------------
    def maybe_resume(self, model, optimizer, train_batches=None):
        """Loads `checkpoint.load` (its `latest`, or an explicit iter_ dir) into the model, and,
        with load_optim, the optimizer, data position and RNG. Returns the TrainState to go on
        from, or None for a fresh start (no --load, or weights only)."""
        from aria_train.train.trainer import TrainState

        source, load_optim = self._load_source()
        if source is None:
            return None
        error = None
        try:  # every rank checks; a problem any rank sees stops all of them (no hang in the load)
            path = layout.resolve_load_dir(source)
            meta = layout.read_metadata(path)
            dcp_meta = layout.check_dcp_files(path)
            saved = dcp_meta.state_dict_metadata

            entries: dict[str, Any] = ckpt_state.model_state(model)
            flat = None
            if load_optim:
                optim_entries, flat = ckpt_state.optimizer_state(optimizer)
                entries.update(optim_entries)
                entries[ckpt_state.TRAIN_STATE_KEY] = None
                if ckpt_state.DATA_STATE_KEY in saved and train_batches is not None:
                    entries[ckpt_state.DATA_STATE_KEY] = None
                if ckpt_state.rng_key(self.rank) in saved:
                    entries[ckpt_state.rng_key(self.rank)] = None
            renamed = ckpt_state.map_decoder_keys(entries, saved)
            if renamed:
                self._info(f"{len(renamed)} decoder tensors of {path} load under the other model's names "
                           f"(text-only <-> multimodal: 'language_model.' prefix)")
            if not load_optim:
                self._skip_new_modules(path, entries, saved)
            self._check_keys(path, entries, saved, load_optim)
        except UserError as exc:
            error = str(exc)
        self._agree_all(error)

        try:
            with ckpt_state.quiet_sharded_tensor():
                dcp.load(entries, checkpoint_id=str(path), process_group=self.pg,
                          no_dist=not self.distributed)
        except Exception as error:
            raise UserError(f"checkpoint {path} could not be loaded: {_one_line(error)}") from error

        self.loaded_from, self.loaded_metadata = path, meta
        saved_layout = f"world {meta.get('world_size')} / ep {meta.get('ep_size')}"
        here = f"world {self.world_size} / ep {self.ep_size}"
        reshard = "" if saved_layout == here else f", resharded from {saved_layout} to {here}"
        if float(meta.get("rope_base", self.cfg.model.rope_base)) != float(self.cfg.model.rope_base):
            self._info(f"checkpoint weights were trained with RoPE base {meta['rope_base']:g}; "
                       f"this run uses {self.cfg.model.rope_base:g}")

        if not load_optim:
            optimizer.reset_from_model()
            self._info(f"loaded weights from {path} (iteration {meta.get('iteration')}{reshard}); "
                       f"optimizer, step and data start fresh")
            return None

        if entries[ckpt_state.OPTIM_FORMAT_KEY] != flat["format"]:
            raise UserError(f"checkpoint {path} holds optimizer state in format "
                            f"{entries[ckpt_state.OPTIM_FORMAT_KEY]!r}; this optimizer reads {flat['format']!r}")
        optimizer.load_sharded_state_dict(self._loaded_flat(entries, flat))
        train = ckpt_state.decode_json(entries[ckpt_state.TRAIN_STATE_KEY])
        state = TrainState(step=int(train["step"]), consumed_samples=int(train["consumed_samples"]))
        if ckpt_state.DATA_STATE_KEY in entries:
            train_batches.load_state_dict(ckpt_state.decode_pickle(entries[ckpt_state.DATA_STATE_KEY]))
        elif train_batches is not None and hasattr(train_batches, "load_state_dict"):
            train_batches.load_state_dict({"consumed_samples": state.consumed_samples})
        rng = ckpt_state.rng_key(self.rank)
        if rng in entries:
            ckpt_state.restore_rng(entries[rng])
        self.last_saved_step = state.step
        self._info(f"resumed from {path} at step {state.step} ({state.consumed_samples} samples consumed{reshard})")
        return state

    def _load_source(self) -> tuple[Optional[str], bool]:
        """Where this run starts from, and whether it takes the optimizer, step and data too.

        - `load` holding a checkpoint: resume it (weights only with --no-load-optim).
        - `load` equal to `save` but empty: a run's first job (SLURM templates pass the same
          directory to both); start from `init_from` if given, else from scratch.
        - `init_from`: a new stage starting from the previous stage's final weights.
        An explicit `load` that holds no checkpoint is an error (resolve_load_dir says why)."""
        load, init_from = self.ckpt.load, self.ckpt.init_from
        first_job = bool(load) and Path(load) == Path(self.ckpt.save or "") and not _holds_checkpoint(load)
        if load and not first_job:
            return load, bool(self.ckpt.load_optim)
        if init_from:
            self._info(f"stage {self.cfg.stage} starts from {init_from} (weights only; fresh optimizer, step 0)")
            return init_from, False
        if first_job:
            self._info(f"no checkpoint in {load} yet: starting from scratch")
        return None, False

    def _skip_new_modules(self, path: Path, entries: dict, saved: dict) -> None:
        """Weights-only loads start a new stage, whose model may have modules the checkpoint
        lacks (stage 2 adds the ViT and projector to stage 1's decoder): those keep their
        initial values. Only whole top-level modules are skipped; anything else missing (e.g. more
        experts than the checkpoint has) is an error in _check_keys."""
        prefix = ckpt_state.MODEL_PREFIX

        def module_of(key: str) -> str:
            return key[len(prefix):].split(".")[0]

        saved_modules = {module_of(key) for key in saved if key.startswith(prefix)}
        if not saved_modules:
            return
        missing = [key for key in entries if key.startswith(prefix) and module_of(key) not in saved_modules]
        if not missing:
            return
        for key in missing:
            del entries[key]
        modules = sorted({module_of(key) for key in missing})
        self._info(f"{len(missing)} model tensors are not in {path} and keep their initial values "
                   f"(modules {', '.join(modules)})")

    def _check_keys(self, path: Path, entries: dict, saved: dict, load_optim: bool) -> None:
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        missing = [key for key in entries if key not in saved]
        if missing:
            what = "optimizer state (use --no-load-optim to take weights only)" if all(
                not key.startswith(ckpt_state.MODEL_PREFIX) for key in missing) else "model tensors"
            raise UserError(f"checkpoint {path} lacks {what}: {', '.join(missing[:3])}"
                            f"{' ...' if len(missing) > 3 else ''}")
        for key, value in entries.items():
            md = saved[key]
            size = ckpt_state.global_size(value)
            if isinstance(md, TensorStorageMetadata) and size is not None and md.size != size:
                raise UserError(f"checkpoint {path} does not fit this model: {key} has shape "
                                f"{list(md.size)} there, {list(size)} here")

    @staticmethod
    def _loaded_flat(entries: dict, template: dict) -> dict:
        from aria_train.optim.flat_state import FlatShard

        out = {"format": template["format"], "step": int(entries[ckpt_state.OPTIM_STEP_KEY]), "state": {}}
        for name, per_state in template["state"].items():
            out["state"][name] = {}
            for key, value in per_state.items():
                pieces = ckpt_state._pieces(value)
                dcp_key = f"{ckpt_state.OPTIM_PREFIX}{name}.{key}"
                if dcp_key in entries:
                    locals_ = ckpt_state.local_tensors(entries[dcp_key])
                    nonempty = [p for p in pieces if p.local.numel() > 0]
                    loaded = [FlatShard(p.global_shape, p.offset, t) for p, t in zip(nonempty, locals_)]
                else:
                    loaded = []
                if not loaded:  # this rank holds nothing of it
                    loaded = pieces
                out["state"][name][key] = loaded[0] if len(loaded) == 1 else loaded
        return out


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    for line in text:
        line = line.strip()
        if line and not line.startswith(("Traceback", "File ", "CheckpointException")):
            return line[:300]
    return type(error).__name__


def _holds_checkpoint(path: str) -> bool:
    root = Path(path)
    if not root.is_dir():
        return False
    return layout.read_latest(root) is not None or layout.is_complete(root)
