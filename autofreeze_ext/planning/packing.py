"""Performance packing (``--mode-goal time``): grow the batch as freezing frees memory.

Once blocks are frozen they run without autograd, so they save no activations for backward:
the memory a worker needs per sample shrinks with every freeze. :class:`BatchPacker` measures
that memory (the bytes autograd saves, :class:`ActivationMeter`) and the step time at each
frozen depth, and fills the memory the job started with by raising the global batch, up to the
bound the user allows (``--max-batch``). Larger batches mean fewer optimizer steps and fewer
all-reduces per epoch; a worker that computes faster per sample at larger batches (a GPU) gains
more. :class:`SampleLinearSchedule` keeps the learning-rate schedule on samples, not steps, so a
growing batch does not shorten it, and scales the rate with the batch (square root by default,
the rule for Adam-style optimizers of Malladi et al., 2022).
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Dict, List, Optional

import torch

from .step_probe import StepTiming

log = logging.getLogger("autofreeze_ext")

LR_SCALINGS = ("sqrt", "linear", "none")


class ActivationMeter:
    """Counts the bytes of the tensors autograd saves for backward while it is entered.

    Parameters are left out (they are not activations) and each storage counts once, with its
    whole size (a saved view keeps its storage alive). Use it around the forward pass of one
    batch: ``with meter: loss = model(**batch).loss``; then ``meter.bytes``.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self._params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.bytes = 0
        self._seen: set = set()
        self._ctx = None

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. fake/meta)
            return t
        ptr = st.data_ptr()
        if ptr and ptr not in self._params and ptr not in self._seen:
            self._seen.add(ptr)
            self.bytes += st.nbytes()
        return t

    def __enter__(self) -> "ActivationMeter":
        self.bytes, self._seen = 0, set()
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)
        self._ctx = None
        self._seen = set()


class SampleLinearSchedule:
    """Linear warm-up then linear decay to 0 over ``total_samples`` *samples* (the schedule of
    ``transformers.get_linear_schedule_with_warmup``, counted in samples), times a factor for
    the batch: ``(batch / base_batch) ** 0.5`` (``"sqrt"``), ``batch / base_batch``
    (``"linear"``) or 1 (``"none"``). :meth:`apply` sets each group's ``lr`` before a step."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_samples: int, warmup_ratio: float,
                 base_batch: int, scaling: str = "sqrt") -> None:
        if scaling not in LR_SCALINGS:
            raise ValueError(f"batch LR scaling must be one of {LR_SCALINGS}, got {scaling!r}")
        self.optimizer, self.total, self.base, self.scaling = optimizer, int(total_samples), int(base_batch), scaling
        self.warmup = int(warmup_ratio * self.total)
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])

    def factor(self, samples_done: int, batch: int) -> float:
        if samples_done < self.warmup:
            f = samples_done / max(1, self.warmup)
        else:
            f = max(0.0, (self.total - samples_done) / max(1, self.total - self.warmup))
        ratio = batch / self.base
        return f * {"sqrt": math.sqrt(ratio), "linear": ratio, "none": 1.0}[self.scaling]

    def apply(self, samples_done: int, batch: int) -> None:
        f = self.factor(samples_done, batch)
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * f

    def state_dict(self) -> dict:  # everything is derived from the samples done
        return {"kind": "samples", "total": self.total, "warmup": self.warmup}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "samples":
            raise ValueError("the checkpoint's LR schedule counts steps; resume it with the same --mode-goal")


class BatchPacker:
    """Decides the global batch of a ``--mode-goal time`` run, one frozen depth at a time.

    It reads the step time from the run's one :class:`~autofreeze_ext.planning.step_probe.StepProbe`
    (``StepTiming.key`` starts with ``(frozen depth, global batch)``: the first two steps at a setting
    are left out, the next ``probe_steps`` are timed) and the activation memory per sample from
    an :class:`ActivationMeter` around the second step at a new depth (:meth:`wants_memory`).
    Then, once per depth:

    * memory: measured per *token* (batches differ in length), then scaled to the longest row
      the run can see (``row_tokens``): ``bytes_per_sample(depth)`` is what a row of that
      length needs, so a batch of the longest rows still fits;
      ``budget / bytes_per_sample(depth)`` is the largest micro-batch a worker can hold;
      the budget is ``max_activation_bytes`` or, by default, what the starting configuration
      needed (bytes per sample at the first depth measured x the starting micro-batch), i.e.
      the job keeps the memory it was sized for and fills what freezing frees;
    * the candidates are the multiples of ``granularity`` (workers and shards) from the current
      batch up to ``min(max_batch, workers x grad_accum x that micro-batch)``;
    * the time model: a step is ``fixed + batch / workers x c`` with ``fixed`` the optimizer
      and statistics time plus one all-reduce of the active gradients (timed now) and ``c``
      the rest of the measured step per sample; an epoch is ``ceil(n / batch)`` steps, of whole
      batches when the sampler pads (``padded``, the sharded sampler) or with a short last one;
    * the new batch is the candidate with the shortest predicted epoch (the smaller one on a
      tie): fewer steps save fixed costs, padding wastes compute; it is taken only when that
      epoch is at least ``min_gain`` (a fraction) shorter than at the current batch, since a
      larger batch also means fewer updates per epoch and can change when blocks freeze. The
      entry keeps the predicted
      step time and samples per second next to the measured ones (filled in once the new
      batch has run).

    The new batch starts with the next epoch (the running epoch's batches are planned, and
    handed to the cache's prefetcher). With more than one rank, rank 0's measurement decides
    (``broadcast``); ``allreduce_s()`` times one all-reduce of the active gradients (a
    collective). ``state`` is the packer's checkpointed state: entries go to ``state["packer"]``.
    """

    def __init__(self, *, base_batch: int, max_batch: int, granularity: int, world_size: int, grad_accum: int,
                 max_activation_bytes: Optional[int], state: dict, epoch_samples: int,
                 padded: bool, allreduce_s: Callable[[], float], broadcast: Callable[[dict], dict],
                 min_gain: float = 0.05, row_tokens: int = 1) -> None:
        if not 0.0 <= min_gain < 1.0:
            raise ValueError(f"the minimum packing gain must be in [0, 1), got {min_gain!r}")
        if max_batch < base_batch:
            raise ValueError(f"--max-batch {max_batch} is smaller than the batch size {base_batch}")
        self.base, self.max_batch, self.gran = int(base_batch), int(max_batch), int(granularity)
        self.world, self.accum = int(world_size), int(grad_accum)
        self.state, self.n_epoch, self.padded = state, int(epoch_samples), bool(padded)
        self.min_gain = float(min_gain)
        self.row_tokens = max(1, int(row_tokens))
        mem = state.setdefault("packer_memory", {"budget": max_activation_bytes, "per_sample": {}})
        if max_activation_bytes is not None:
            mem["budget"] = int(max_activation_bytes)
        self.mem = mem
        state.setdefault("packer", [])
        self.allreduce_s, self.broadcast = allreduce_s, broadcast

    @property
    def entries(self) -> List[dict]:
        return self.state["packer"]

    def per_sample_bytes(self, depth: int) -> Optional[float]:
        return self.mem["per_sample"].get(str(depth))

    def wants_memory(self, depth: int) -> bool:
        """Whether the activation memory per sample at ``depth`` is still to be measured."""
        return self.per_sample_bytes(depth) is None

    def record_memory(self, depth: int, nbytes: int, samples: int, tokens: Optional[int] = None) -> None:
        """The meter's reading for one micro-batch of ``samples`` rows and ``tokens`` tokens
        (padding included; None: rows of ``row_tokens``) at ``depth``."""
        tokens = samples * self.row_tokens if tokens is None else tokens
        per = nbytes / max(1, tokens) * self.row_tokens  # a row of the longest length
        self.mem["per_sample"][str(depth)] = per
        if self.mem["budget"] is None:  # the starting configuration's memory
            self.mem["budget"] = per * self.base / (self.world * self.accum)

    def on_timing(self, timing: StepTiming, step: int) -> Optional[int]:
        """A step probe's reading at ``timing.key == (depth, global batch, ...)``; returns a new
        global batch when one is decided."""
        depth, batch = timing.key[:2]
        for e in self.entries:  # the check of an earlier prediction
            if e["batch_to"] == batch and e["batch_to"] != e["batch_from"] and e["measured_step_s"] is None:
                e["measured_step_s"], e["measured_at_depth"] = timing.step_s, depth
                e["measured_samples_per_s"] = timing.samples_per_s
        if any(e["depth"] == depth for e in self.entries):
            return None
        return self._decide(depth, batch, timing.step_s, timing.fixed_s, step)

    def _decide(self, depth: int, batch: int, t_step: float, fixed: float, step: int):
        t_ar = self.allreduce_s() if self.world > 1 else 0.0
        fixed_all = fixed + t_ar
        per_worker = batch / self.world
        c = max(t_step - fixed_all, 1e-9) / per_worker
        per = self.per_sample_bytes(depth)
        budget = self.mem["budget"]
        if per and budget:
            fits = int(budget // per) * self.world * self.accum  # global samples whose activations fit
        else:
            fits = self.max_batch
        cap = min(self.max_batch, fits)
        cap -= cap % self.gran

        def predict(b):
            return fixed_all + b / self.world * c

        def epoch_s(b):
            steps = -(-self.n_epoch // b)
            return steps * predict(b) if self.padded else steps * fixed_all + self.n_epoch / self.world * c

        best = min(range(batch, max(batch, cap) + 1, self.gran), key=lambda b: (epoch_s(b), b))
        new = best if epoch_s(best) <= (1.0 - self.min_gain) * epoch_s(batch) else batch

        entry = {"step": step, "depth": depth, "batch_from": batch, "batch_to": new, "max_batch": self.max_batch,
                 "bytes_per_sample": per, "budget_bytes": budget, "batch_memory_fits": fits,
                 "step_s_now": t_step, "fixed_s": fixed, "allreduce_s": t_ar, "compute_s_per_sample": c,
                 "samples_per_s_now": batch / t_step, "predicted_step_s": predict(new),
                 "predicted_samples_per_s": new / predict(new), "predicted_epoch_s": epoch_s(new),
                 "epoch_s_now": epoch_s(batch), "best_batch": best, "best_epoch_s": epoch_s(best),
                 "min_gain": self.min_gain,
                 "measured_step_s": t_step if new == batch else None,
                 "measured_samples_per_s": batch / t_step if new == batch else None,
                 "measured_at_depth": depth if new == batch else None}
        entry = self.broadcast(entry)
        self.entries.append(entry)
        log.info("packer: depth %d, %.1f KiB saved per sample (budget %.1f MiB per worker): global batch %d -> %d "
                 "from the next epoch, predicted %.1f -> %.1f samples/s", depth, (per or 0) / 1024,
                 (budget or 0) / 2**20, batch, entry["batch_to"], entry["samples_per_s_now"],
                 entry["predicted_samples_per_s"])
        return entry["batch_to"] if entry["batch_to"] != batch else None


def describe(entries: List[Dict]) -> List[List[str]]:
    """Rows for a table of the packer's decisions."""
    rows = []
    for e in entries:
        meas = e.get("measured_samples_per_s")
        rows.append([str(e["step"]), str(e["depth"]), f"{e['batch_from']} -> {e['batch_to']}",
                     f"{(e['bytes_per_sample'] or 0) / 1024:.1f}", f"{e['samples_per_s_now']:.1f}",
                     f"{e['predicted_samples_per_s']:.1f}", "-" if meas is None else f"{meas:.1f}"])
    return rows
