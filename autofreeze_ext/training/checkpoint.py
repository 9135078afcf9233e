"""The checkpoint: its format (what a run's state is, :func:`run_state`; how a run reads it back,
:func:`restore`, :func:`restore_parts`, :func:`saved_run_id`, :func:`sharded`), one version,
written atomically with the previous one kept, checked against the run that resumes it."""
from __future__ import annotations

import logging
import os
from typing import Optional

import torch

from .._io import atomic_write
from .report import cache_totals

log = logging.getLogger("autofreeze_ext")

VERSION = 4  #: the one format this package writes and reads (no release before it to migrate from); 4: the typed run record


#: options a resumed run may change (where it writes, how it reports); every other must match
MAY_DIFFER = frozenset({"resume", "progress", "checkpoint_every", "stop_after_steps", "save_model", "overwrite",
                        "cache_dir", "cache_memory", "cache_disk", "device", "evals_per_epoch", "dev", "metric"})


def previous(path: str) -> str:
    """Where the checkpoint before the newest is kept until the newest is complete."""
    return path + ".prev"


def load_checkpoint(path: str) -> dict:
    """Read the newest checkpoint, or the one before it when the newest cannot be read (truncated,
    damaged): :class:`ValueError` when neither can, or when it is of another version."""
    try:
        state = torch.load(path, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - torch.load fails in many ways on a damaged file
        older = previous(path)
        if not os.path.exists(older):
            raise ValueError(f"{path}: the checkpoint cannot be read ({exc}) and there is no earlier one: start "
                             "fresh without --resume, or in another --checkpoint-dir") from None
        log.warning("%s cannot be read (%s): resuming from the checkpoint before it, %s", path, exc, older)
        try:
            state = torch.load(older, weights_only=False)
        except Exception as exc2:  # noqa: BLE001
            raise ValueError(f"{path} and {older}: neither checkpoint can be read ({exc2})") from None
    if state.get("version") != VERSION:
        raise ValueError(f"{path}: a checkpoint of version {state.get('version')}, this package reads version "
                         f"{VERSION} only: start fresh without --resume, or in another --checkpoint-dir")
    return state


def save_checkpoint(path: str, state: dict) -> None:
    """Write ``state`` as a version-:data:`VERSION` checkpoint, atomically; the checkpoint it
    replaces is kept as :func:`previous` (the fallback when the newest is damaged)."""
    def write(f):
        torch.save({**state, "version": VERSION}, f)
        if os.path.exists(path):  # the new one is complete in its temporary file by now
            os.replace(path, previous(path))
    atomic_write(path, write, binary=True)


#: options that name a file or folder: recorded resolved (:func:`resume_options`), so they match when
#: they name the same one (``data/../x`` and ``x``, a link, a relative path from another folder)
PATHS = frozenset({"train", "val", "model", "checkpoint_dir"})


def _real(key: str, v):
    return os.path.realpath(v) if key in PATHS and isinstance(v, str) else v


def _same(key: str, saved, now) -> bool:
    return _real(key, saved) == _real(key, now)


def check_options(path: str, saved: dict, now: dict) -> None:
    """A resumed run's options against the checkpoint's: every one outside :data:`MAY_DIFFER`
    must match (``ValueError`` naming both values); paths match when they name the same file."""
    diff = [(k, saved[k], now[k]) for k in sorted(saved)
            if k in now and k not in MAY_DIFFER and not _same(k, saved[k], now[k])]
    if diff:
        said = "; ".join(f"--{k.replace('_', '-')} {a!r} there, {b!r} now" for k, a, b in diff)
        raise ValueError(f"{path} was written with other options ({said}): resume with the checkpoint's options, "
                         "or start fresh in another --checkpoint-dir")


def rng_states(run) -> dict:
    """This rank's random-number streams: the CPU generator and, on a GPU run, its device's."""
    cuda = None
    if run.ctx.device.type == "cuda":
        cuda = torch.cuda.get_rng_state(run.ctx.device)
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def run_state(run, rngs: list, parts) -> dict:
    """Everything a resumed run needs: model, optimizer, schedule, controller, sampler position,
    every rank's RNG streams (``rngs``: :func:`rng_states` of each rank), AMP scaler, the
    cache's identity and counts so far, the options to check, and the state of each named part
    of ``parts``."""
    cache = run.cache
    return {
        "mode": run.cfg.freeze.mode, "run_id": run.run_id, "step": run.prog.step, "options": resume_options(run),
        "model": run.model.state_dict(), "optimizer": run.opt.state_dict(), "scheduler": run.sched.state_dict(),
        "controller": run.ctl.state_dict(), "sampler": run.sampler.state_dict(),
        "rng_per_rank": [r["cpu"] for r in rngs], "cuda_rng_per_rank": [r["cuda"] for r in rngs],
        "packing": run.packing, "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "cache": {"path": cache.path, "fingerprint": cache.fingerprint} if cache is not None else None,
        "cache_counts": cache_totals(run) if cache is not None else None,
        "parts": {p.name: p.state_dict() for p in parts if p.name}}


def restore_parts(state: dict, parts) -> None:
    """Give each named part of ``parts`` the state the checkpoint kept for it."""
    for p in parts:
        if p.name and state["parts"].get(p.name) is not None:
            p.load_state_dict(state["parts"][p.name])


def saved_run_id(state: dict) -> str:
    """The run id (the cache's fingerprint) of the run that wrote the checkpoint."""
    return state["run_id"]


def sharded(state: Optional[dict]) -> bool:
    """The checkpointed run dealt samples to shards (its sampler must be the sharded one)."""
    return state is not None and "shards" in state["sampler"]


def resume_options(run) -> dict:
    """What a checkpoint records of the run's options: all of them, with the model's real path
    and every path resolved (:data:`PATHS`: a resume from another folder compares the files)."""
    return {k: _real(k, v) for k, v in {**run.cfg.options(), "model": run.model_path}.items()}


def restore(run, state: dict) -> None:
    """Load model, controller (before the optimizer: it removes frozen parameters), optimizer,
    schedule, sampler, AMP scaler and this rank's RNG stream."""
    cfg, ctx = run.cfg, run.ctx
    check_options(run.ckpt_path, state["options"], resume_options(run))
    if state["mode"] != cfg.freeze.mode:
        raise ValueError(f"{run.ckpt_path} was written by mode {state['mode']!r}, not {cfg.freeze.mode!r}")
    if state["packing"] != run.packing:
        raise ValueError(f"{run.ckpt_path} was written {'with' if state['packing'] else 'without'} a growing "
                         "batch (--mode-goal time --max-batch): resume with the same options")
    run.model.load_state_dict(state["model"])
    run.ctl.load_state_dict(state["controller"])
    run.opt.load_state_dict(state["optimizer"])
    run.sched.load_state_dict(state["scheduler"])
    run.sampler.load_state_dict(state["sampler"])
    if run.scaler is not None and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    rngs, cuda = state["rng_per_rank"], state["cuda_rng_per_rank"]
    if len(rngs) == ctx.world_size:
        torch.set_rng_state(rngs[ctx.rank])
        if cuda[ctx.rank] is not None and ctx.device.type == "cuda":
            torch.cuda.set_rng_state(cuda[ctx.rank], ctx.device)
    else:  # restarted on a different number of workers: fresh dropout streams
        torch.manual_seed(cfg.optim.seed * 7919 + ctx.rank + 104729 * state["step"])  # (seeds every CUDA device too)
    log.info("resumed from %s at step %d, frozen depth %d", run.ckpt_path, state["step"], run.ctl.frozen_depth)
