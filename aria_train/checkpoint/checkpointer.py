"""Saving and resuming a run with torch.distributed.checkpoint (DCP).

    checkpointer = Checkpointer(cfg.checkpoint, groups, run_description, logger)  # every rank
    parts = TrainingParts(model, optimizer, train_state, data_iterator)
    checkpointer.maybe_resume(parts)       # the step resumed at, or None (fresh / weights only)
    ... checkpointer.save(parts) when due (aria_train.train.callbacks), finalize() at the end

Every rank writes its part of one DCP checkpoint (see aria_train.checkpoint.state for the keys,
aria_train.checkpoint.layout for the directory rules). Keys name parameters and GLOBAL expert
indices, never ranks, so a checkpoint loads at any world size and expert-parallel size: DCP reads
for each rank exactly the experts and optimizer ranges it holds in the new layout.

With `checkpoint.async_save` the state is copied to CPU memory in the training thread and written
by a background thread (DCP over a dedicated gloo group), so training goes on meanwhile; the next
save or `finalize` waits for it.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import yaml
from torch.distributed.checkpoint.api import CheckpointException

from aria_train.checkpoint import layout, resume
from aria_train.checkpoint import state as ckpt_state
from aria_train.checkpoint.config import CheckpointConfig
from aria_train.checkpoint.parts import RunDescription, TrainingParts
from aria_train.errors import UserError
from aria_train.parallel.groups import ParallelGroups


class Checkpointer:
    def __init__(self, ckpt: CheckpointConfig, groups: ParallelGroups, run: RunDescription, logger=None):
        self.ckpt = ckpt
        self.run = run
        self.logger = logger
        self.distributed = groups.distributed
        self.rank = groups.rank
        self.world_size = groups.world_size
        self.ep_size = groups.ep_size
        # DCP's own collectives go over a gloo group of their own: CPU-side, and safe to run from
        # the background thread while training uses the default group.
        self.pg = dist.new_group(backend="gloo") if self.distributed else None
        self._thread: Optional[threading.Thread] = None
        self._thread_error: Optional[BaseException] = None
        self.last_saved_step: Optional[int] = None

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
    def save(self, parts: TrainingParts) -> None:
        """Writes a checkpoint of `parts` at their current step (every rank calls it)."""
        if not self.ckpt.save:
            return
        train = parts.train_state.state_dict()
        step = int(train["step"])
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
                error = resume.save_failed_message(root, step, exc)
        self._agree(error)  # also: the directory exists before anyone writes into it

        entries = self._entries_to_save(parts, train)
        metadata = self._metadata(parts, train)
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
        root.mkdir(parents=True, exist_ok=True)
        partial = layout.partial_dir(root, step)
        if partial.exists():  # left by an interrupted save of the same iteration
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        with open(partial / layout.CONFIG_FILE, "w") as handle:
            yaml.safe_dump(self.run.config, handle, sort_keys=False)

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
        try:
            with ckpt_state.quiet_sharded_tensor():
                dcp.save(entries, storage_writer=dcp.FileSystemWriter(str(partial)), process_group=self.pg,
                         no_dist=not self.distributed)
        except (Exception, CheckpointException) as exc:  # DCP gathers every rank's failure into all of them
            message = resume.save_failed_message(root, step, exc)
            self._barrier()  # every rank has read the free space before the partial save goes
            if self.rank == 0:
                shutil.rmtree(partial, ignore_errors=True)  # give the space back; `latest` never moved
            raise UserError(message) from None
        self._barrier()  # every rank's data is on disk
        error, final = None, None
        if self.rank == 0:
            try:
                final = layout.commit(root, step, metadata, self.ckpt.keep_last)
            except OSError as exc:
                error = resume.save_failed_message(root, step, exc)
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

    def finalize(self) -> None:
        """End of training: waits for an in-flight save; every rank leaves together."""
        self.wait()
        self._barrier()

    def _entries_to_save(self, parts: TrainingParts, train: dict) -> dict[str, Any]:
        entries: dict[str, Any] = {}
        entries.update(ckpt_state.model_state(parts.model))
        optim_entries, _ = ckpt_state.optimizer_state(parts.optimizer)
        entries.update(optim_entries)
        entries[ckpt_state.TRAIN_STATE_KEY] = ckpt_state.encode_json(
            {"step": int(train["step"]), "consumed_samples": int(train["consumed_samples"])}
        )
        if parts.data is not None:
            entries[ckpt_state.DATA_STATE_KEY] = ckpt_state.encode_pickle(parts.data.state_dict())
        entries[ckpt_state.rng_key(self.rank)] = ckpt_state.encode_pickle(parts.rng.state_dict())
        return entries

    def _metadata(self, parts: TrainingParts, train: dict) -> dict:
        return {
            "format": layout.FORMAT_NAME,
            "format_version": layout.FORMAT_VERSION,
            "iteration": int(train["step"]),
            "consumed_samples": int(train["consumed_samples"]),
            "stage": int(self.run.stage),
            "rope_base": float(self.run.rope_base),
            "model_preset": self.run.model_preset,
            "num_experts": int(self.run.num_experts),
            "world_size": self.world_size,
            "ep_size": int(self.ep_size),
            "optimizer": type(parts.optimizer).__name__,
            "torch_version": torch.__version__,
        }

    # ---- resuming -------------------------------------------------------------------------
    def maybe_resume(self, parts: TrainingParts) -> Optional[int]:
        """Loads `checkpoint.load` (its `latest`, or an explicit iter_ dir) into the model, and,
        with load_optim, the optimizer, train state, data position and RNG. Returns the step the
        run goes on from, or None for a fresh start (no --load, or weights only)."""
        source, load_optim, key = resume.load_source(self.ckpt, self.run.stage, self._info)
        if source is None:
            return None
        path, meta, entries, flat = self._plan_load(source, key, parts, load_optim)
        try:
            with ckpt_state.quiet_sharded_tensor():
                dcp.load(entries, checkpoint_id=str(path), process_group=self.pg,
                          no_dist=not self.distributed)
        except Exception as error:
            raise UserError(f"checkpoint {path} could not be loaded: {resume.one_line(error)}") from error

        saved_layout = f"world {meta.get('world_size')} / ep {meta.get('ep_size')}"
        here = f"world {self.world_size} / ep {self.ep_size}"
        reshard = "" if saved_layout == here else f", resharded from {saved_layout} to {here}"
        if float(meta.get("rope_base", self.run.rope_base)) != float(self.run.rope_base):
            self._info(f"checkpoint weights were trained with RoPE base {meta['rope_base']:g}; "
                       f"this run uses {self.run.rope_base:g}")
        if not load_optim:
            parts.optimizer.reset_from_model()
            self._info(f"loaded weights from {path} (iteration {meta.get('iteration')}{reshard}); "
                       f"optimizer, step and data start fresh")
            return None
        train = resume.restore_parts(parts, entries, flat, path, self.rank)
        self.last_saved_step = int(train["step"])
        self._info(f"resumed from {path} at step {train['step']} ({train['consumed_samples']} samples "
                   f"consumed{reshard})")
        return int(train["step"])

    def _plan_load(self, source: str, key: str, parts: TrainingParts, load_optim: bool):
        """(checkpoint dir, its metadata, DCP entries, optimizer state template). Every rank
        checks; a problem any rank sees stops all of them (no hang in the collective load)."""
        error = path = meta = entries = flat = None
        try:
            path = layout.resolve_load_dir(source, key)
            meta = layout.read_metadata(path)
            saved = layout.check_dcp_files(path).state_dict_metadata
            entries, flat = resume.entries_to_load(parts, saved, self.rank, load_optim)
            renamed = ckpt_state.map_decoder_keys(entries, saved)
            if renamed:
                self._info(f"{len(renamed)} decoder tensors of {path} load under the other model's names "
                           f"(text-only <-> multimodal: 'language_model.' prefix)")
            if not load_optim:
                resume.skip_new_modules(path, entries, saved, self._info)
            resume.check_keys(path, entries, saved)
        except UserError as exc:
            error = str(exc)
        self._agree_all(error)
        return path, meta, entries, flat
