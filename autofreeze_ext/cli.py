"""``autofreeze``: fine-tune a sequence classifier with AutoFreeze and compare modes.

    autofreeze finetune [--mode autofreeze] [--train F --dev F] [--model PATH] ...
    autofreeze compare --modes full,static:half,autofreeze ...

With no data or model arguments it fine-tunes the packaged MiniLM-L6 (``pip install ".[demo]"``)
on a built-in 2,000-sentence SST-2 sample and evaluates on the full SST-2 dev set.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import types
from typing import List, Optional

from ._io import atomic_json
from ._table import print_table
from .cache.activation_cache import CacheError
from .planning.estimate import estimate_full_time, estimate_lines
from .policies import DEFAULT_POLICY, POLICIES, parse_mode, reads_val_slice
from .tasks import DataError
from .training import MODES_HELP, PHASES, FinetuneConfig, ModelError, compare_headers, compare_table, finetune
from .training.config import STABILITY_SIGNALS, option_fields, validate
from .training.outputs import check_outputs
from .training.modes import wants_val_slice
from .tasks.split import DEFAULT_FRACTION


def _common(p: argparse.ArgumentParser) -> None:
    d = types.SimpleNamespace(**FinetuneConfig().options())
    p.add_argument("--train", default=d.train,
                   help="training data: TSV, CSV, JSON Lines or Parquet (by extension, or --format); "
                        "default: built-in SST-2 sample")
    p.add_argument("--dev", default=d.dev, help="dev data, same columns; default: SST-2 dev set")
    p.add_argument("--model", default=None, help="Hugging Face BERT-family checkpoint folder; default: packaged MiniLM")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--max-length", type=int, default=d.max_length, help="longest row in tokens (longer ones are cut)")
    p.add_argument("--batching", choices=["grouped", "random", "padded"], default=d.batching,
                   help="grouped (default): rows of similar length batched together, each batch padded to its "
                        "longest row (a Trainer with group_by_length); random: shuffled, padded per batch; "
                        "padded: every row padded to --max-length")
    p.add_argument("--pad-to-multiple-of", type=int, default=None, metavar="N",
                   help="round each batch's length up to a multiple of N (default: 8 on CUDA, 1 on CPU)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--intervals-per-epoch", type=int, default=d.intervals_per_epoch)
    p.add_argument("--evals-per-epoch", type=int, default=d.evals_per_epoch)
    p.add_argument("--train-samples", type=int, default=None, help="use only the first N training rows")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--grad-accum", type=int, default=1, metavar="K",
                   help="split each batch into K micro-batches whose gradients add up before one optimizer step")
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="mixed precision (autocast)")
    p.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="torch.compile each block (default backend: inductor)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=d.device,
                   help="cpu (gloo under torchrun) or cuda (NCCL, one GPU per rank)")
    p.add_argument("--out", default="autofreeze_out", help="folder for the JSON report and PNG plot")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    p.add_argument("--record-signals", action="store_true",
                   help="measure every per-block freezing signal each interval into the report (full mode then "
                        "observes; used to replay policies offline)")
    _task_args(p, d)
    _policy_args(p, d)
    c = p.add_argument_group("activation cache (modes ending in +cache)")
    c.add_argument("--cache-dir", default=None,
                   help="folder of the cache's disk tier (default: RAM tier only); a full or read-only disk "
                        "turns the disk tier off with a warning")
    c.add_argument("--cache-memory", default=d.cache_memory, help="RAM tier budget, e.g. 2GiB (0: disk only)")
    c.add_argument("--cache-disk", default=None, help="disk tier budget, e.g. 20GiB (default: the disk's size)")
    c.add_argument("--no-cost-model", action="store_true",
                   help="cache at every frozen depth instead of only where reading beats recomputing")
    k = p.add_argument_group("checkpoints")
    k.add_argument("--checkpoint-dir", default=None, help="write checkpoints here (atomically)")
    k.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="steps between checkpoints")
    k.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir")
    k.add_argument("--stop-after-steps", type=int, default=None, help=argparse.SUPPRESS)
    g = p.add_argument_group("data parallel (run under torchrun --nproc_per_node N; --batch-size is the global batch)")
    g.add_argument("--data-shards", type=int, default=None,
                   help="in one process: train on the global batches an N-rank job sees (reference runs)")
    g.add_argument("--reshuffle-shards-every", type=int, default=0, metavar="EPOCHS",
                   help="deal samples to ranks anew every EPOCHS epochs (default 0: never, so each rank's "
                        "cache keeps hitting)")
    g.add_argument("--mode-goal", choices=["time", "cost"], default=None,
                   help="time: keep every worker (finish soonest) and, with --max-batch, grow the global batch "
                        "as freezing frees activation memory; cost: at a freeze, continue on fewer workers "
                        "when they finish before the deadline for fewer worker-seconds (needs --checkpoint-dir; "
                        "run under `autofreeze launch` to relaunch automatically)")
    g.add_argument("--deadline-s", type=float, default=None,
                   help="cost goal: training seconds allowed (default: full fine-tuning's projected time)")
    g.add_argument("--min-workers", type=int, default=1, help="cost goal: never fewer workers than this")
    g.add_argument("--restart-s", type=float, default=None,
                   help="cost goal: what a relaunch costs, seconds (default: this launch's measured start-up)")
    g.add_argument("--max-batch", type=int, default=None,
                   help="time goal: the largest global batch allowed; from the epoch after a freeze the batch "
                        "grows to what the freed activation memory holds, within this bound (LR scheduled by "
                        "samples and scaled with the batch)")
    g.add_argument("--max-activation-memory", default=None, metavar="BYTES",
                   help="time goal: activation memory per worker the batch may fill, e.g. 4GiB (default: what "
                        "the starting batch needed, measured)")
    g.add_argument("--min-packing-gain", type=float, default=d.min_packing_gain, metavar="FRACTION",
                   help="time goal: grow the batch only when the predicted epoch gets at least this much "
                        "shorter (default 0.05; 0: whenever it is shorter)")
    g.add_argument("--batch-lr-scaling", choices=["sqrt", "linear", "none"], default=d.batch_lr_scaling,
                   help="time goal: LR factor when the batch grows k-fold: sqrt(k) (default, for Adam), k, or 1")


def _config(args, mode: str, per_mode_dirs: bool = False) -> FinetuneConfig:
    def sub(folder):  # one subfolder per mode when comparing
        return os.path.join(folder, mode_slug(mode)) if folder and per_mode_dirs else folder
    same = {name: getattr(args, name) for name in option_fields() if hasattr(args, name)}
    cfg = FinetuneConfig.from_options(**{
        **same, "mode": mode, "save_model": sub(args.save_model), "cache_dir": sub(args.cache_dir),
        "checkpoint_dir": sub(args.checkpoint_dir), "progress": not args.no_progress,
        "cache_cost_model": not args.no_cost_model, "warmup_guard": not args.no_warmup_guard})
    validate(cfg)
    return cfg


def _task_args(p: argparse.ArgumentParser, d: FinetuneConfig) -> None:
    from .tasks import FORMATS, METRICS
    from .tasks.labels import KINDS

    t = p.add_argument_group("task data (defaults find GLUE's usual column names)")
    t.add_argument("--format", dest="data_format", choices=FORMATS, default=None,
                   help="file format of --train/--dev (default: from the extension: .tsv .csv .jsonl .parquet)")
    t.add_argument("--text-column", default=None,
                   help="the text column (default: sentence1, question1, question, premise, sentence or text)")
    t.add_argument("--text-pair-column", default=None,
                   help="the second text of a pair (default: sentence2, question2, sentence or hypothesis "
                        "beside the first; none for single texts)")
    t.add_argument("--label-column", default=None, help="the label column (default: label, labels or score)")
    t.add_argument("--label-kind", choices=KINDS, default=d.label_kind,
                   help="auto (default): integer labels are class ids, other numbers regression targets, anything "
                        "else class names (ids in sorted order); classes / regression force one")
    t.add_argument("--metric", choices=METRICS, default=None,
                   help="the dev metric that drives the comparison (default: accuracy for classification, "
                        "pearson for regression); every metric of the task's kind is reported")
    t.add_argument("--val", default=None, metavar="FILE",
                   help="a validation file (the training data's columns) for the plateau policy and the early-"
                        "stopping readout; never the dev set the run reports (default: the plateau policy holds "
                        "out 5%% of the training rows)")
    t.add_argument("--val-fraction", type=float, default=None, metavar="F",
                   help="hold out this fraction of the training rows (stratified, at most 2,000 rows) as the "
                        "validation slice, whatever the policy (default: 0.05 when the policy reads one)")
    t.add_argument("--save-model", default=None, metavar="DIR",
                   help="write the fine-tuned model and tokenizer here at the end (save_pretrained; loads with "
                        "AutoModelForSequenceClassification.from_pretrained(DIR))")
    t.add_argument("--overwrite", action="store_true",
                   help="let --save-model replace what a non-empty folder holds (refused otherwise)")


def _policy_args(p: argparse.ArgumentParser, d: FinetuneConfig) -> None:
    g = p.add_argument_group("freezing policy (mode autofreeze)")
    g.add_argument("--policy", default=None, choices=sorted(POLICIES),
                   help=f"the adaptive policy (default: {DEFAULT_POLICY}); "
                        + "; ".join(f"{name}: {text}" for name, (_, text) in POLICIES.items()).replace("%", "%%"))
    g.add_argument("--percentile", type=float, default=d.percentile,
                   help="gradient tests: freeze below the N-th percentile of the blocks' change rates, N in (0, 100)")
    g.add_argument("--threshold", type=float, default=None,
                   help="stability/budget: a block passes when its signal is below this (default: the policy's)")
    g.add_argument("--signal", default=d.signal, choices=STABILITY_SIGNALS,
                   help="stability/budget: the per-block signal")
    g.add_argument("--patience", type=int, default=d.patience,
                   help="guard: intervals in a row a block must pass before it freezes")
    g.add_argument("--learned", type=_off_or_float, default=d.learned, metavar="RATIO|off",
                   help="guard: freeze only once the probe-batch loss has been <= RATIO of the constant guess's "
                        "loss (the model has started learning); off: no such guard")
    g.add_argument("--max-new-blocks", type=_off_or_int, default=d.max_new_blocks, metavar="K|off",
                   help="guard: at most K more frozen blocks per interval")
    g.add_argument("--no-warmup-guard", action="store_true", help="allow freezing during the LR warm-up")
    g.add_argument("--target-speedup", type=float, default=None,
                   help="policy budget: the training-time speedup over full fine-tuning to meet, e.g. 2.0")
    g.add_argument("--freeze-at", type=float, default=d.freeze_at, metavar="FRACTION",
                   help="policy late: all blocks but the top one freeze after this fraction of the run's steps")
    g.add_argument("--keep-top", type=int, default=d.keep_top, metavar="K",
                   help="policies late/plateau: the top K blocks always train (default 1)")
    g.add_argument("--plateau-patience", type=int, default=d.plateau_patience, metavar="N",
                   help="policy plateau: validation checks in a row without a better score or a lower loss that "
                        "make a plateau (default 2)")
    g.add_argument("--min-improvement", type=float, default=d.min_improvement, metavar="DELTA",
                   help="policy plateau: how much the validation score must beat its best to count (default 0)")
    g.add_argument("--val-checks-per-epoch", type=int, default=d.val_checks_per_epoch, metavar="N",
                   help="policy plateau: validation slice checks per epoch (default 2)")
    g.add_argument("--stop-when-converged", action="store_true",
                   help="policy plateau: after the freeze, end the run when the validation slice plateaus again "
                        "(early stopping built in); the dev set is scored and the model saved where it stops")
    g.add_argument("--anneal-steps", type=int, default=0, metavar="N",
                   help="soft transition (any mode that freezes during training): a freeze's updates fade to zero "
                        "over N optimizer steps before the blocks freeze (default 0: at once)")
    g.add_argument("--freeze-word-embeddings", action="store_true",
                   help="freeze the word embeddings from step 0 (about half of MiniLM's parameters)")


def _warn_unused_policy_options(args, modes: List[str]) -> None:
    """The policy options only steer mode autofreeze, and the plateau options only the plateau
    policies: say so when a run would ignore them."""
    given = [f"--{k.replace('_', '-')}" for k in ("policy", "threshold", "target_speedup")
             if getattr(args, k) is not None]
    for mode in modes:
        if given and _kind(mode) != "autofreeze":
            print(f"autofreeze: warning: {', '.join(given)} only apply to --mode autofreeze[+cache]; mode "
                  f"{mode!r} ignores them", file=sys.stderr)
    d = FinetuneConfig().freeze
    plateau = [f"--{k.replace('_', '-')}" for k in ("stop_when_converged", "plateau_patience", "min_improvement",
                                                     "val_checks_per_epoch") if getattr(args, k) != getattr(d, k)]
    if plateau and not reads_val_slice(args.policy or DEFAULT_POLICY):
        print(f"autofreeze: warning: {', '.join(plateau)} only apply to --policy plateau or plateau-or-late; "
              f"policy {args.policy or DEFAULT_POLICY!r} ignores them", file=sys.stderr)


def _kind(mode: str) -> Optional[str]:
    try:
        return parse_mode(mode).kind
    except ValueError:
        return None  # the configuration's check says what is wrong with it


def _off_or_float(v: str) -> Optional[float]:
    return None if v.lower() in ("off", "none") else float(v)


def _off_or_int(v: str) -> Optional[int]:
    return None if v.lower() in ("off", "none") else int(v)


def mode_slug(mode: str) -> str:
    return mode.replace(":", "-").replace("+", "_").replace("@", "at")


def _print_phases(reports: List[dict]) -> None:
    rows = []
    for r in reports:
        ph, total = r["phases_s"], r["train_time_s"] or 1.0
        rows.append([r["mode"]] + [f"{ph[k]:.1f} ({100 * ph[k] / total:.0f}%)" for k in PHASES])
    print("time per phase, seconds (share of training time):")
    print_table(["mode"] + [k.replace("_", " ") for k in PHASES], rows)


def _print_packing(report: dict) -> None:
    if not report.get("packer"):
        return
    from .planning.packing import describe

    print("time goal: global batch per frozen depth (samples/s: before, predicted, measured at the new batch):")
    print_table(["step", "depth", "global batch", "KiB saved/sample", "samples/s", "predicted", "measured"],
                describe(report["packer"]))


def _write(args, name: str, reports: List[dict]) -> None:
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"{name}.json")
    atomic_json(path, reports[0] if len(reports) == 1 else {"runs": reports})
    print(f"report: {path}")
    if not args.no_plot:
        from .plots import plot_reports

        print(f"plot:   {plot_reports(reports, os.path.join(args.out, f'{name}.png'))}")


def main(argv: Optional[List[str]] = None, parts=None) -> int:
    """The ``autofreeze`` command; ``parts``: extra training-loop parts (tests install fault injection)."""
    ap = argparse.ArgumentParser(prog="autofreeze", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_ft = sub.add_parser("finetune", help="fine-tune in one mode")
    p_ft.add_argument("--mode", default="autofreeze", help=MODES_HELP)
    _common(p_ft)
    p_cmp = sub.add_parser("compare", help="run several modes with the same seed and data")
    p_cmp.add_argument("--modes", default="full,static:half,autofreeze", help=f"comma-separated: {MODES_HELP}")
    _common(p_cmp)
    sub.add_parser("info", help="which backends this install has, and how to get the missing ones")
    p_l = sub.add_parser("launch", help="run `finetune` under torchrun and relaunch it on the number of workers "
                                        "the cost planner asks for",
                         description="autofreeze launch --nproc N [--max-restarts K] finetune --mode-goal cost "
                                     "--checkpoint-dir DIR ... : runs torchrun --standalone --nproc_per_node N; when "
                                     "the run stops with DIR/scale_request.json, relaunches on the requested number "
                                     "of workers with --resume (on one node; across nodes, torchrun's elastic "
                                     "--nnodes MIN:MAX does the same membership change)")
    p_l.add_argument("--nproc", type=int, required=True)
    p_l.add_argument("--max-restarts", type=int, default=0, help="torchrun restarts after a worker failure")
    p_l.add_argument("command", nargs=argparse.REMAINDER, help="finetune ARGS...")
    args = ap.parse_args(argv)
    if args.cmd == "info":
        return info()
    if args.cmd == "launch":
        return launch(args.nproc, args.max_restarts, args.command)
    rank = int(os.environ.get("RANK", "0"))  # under torchrun: only rank 0 logs, prints and writes
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s",
                        stream=sys.stderr)
    if args.threads is not None and args.threads < 1:
        print(f"autofreeze: error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        rc = _train(args, rank, parts)
    finally:
        torn_down = _shutdown_distributed(sys.exc_info()[0] is None)
    if torn_down:  # a torchrun worker that finished: leave before interpreter finalization
        _exit_worker(rc)
    return rc


def _train(args, rank: int, parts=None) -> int:
    try:
        cfgs = _configs(args)
        reports = [finetune(cfg, parts) for cfg in cfgs]
        if rank != 0:
            return 0
        print_table(compare_headers(reports), compare_table(reports))
        _print_phases(reports)
        if args.cmd == "finetune":
            _print_packing(reports[0])
            reports[0]["estimate"] = estimate_full_time(reports[0])
            print("\n".join(estimate_lines(reports[0])))
        _write(args, f"finetune_{mode_slug(args.mode)}" if args.cmd == "finetune" else "compare", reports)
    except (DataError, ModelError, CacheError, ValueError) as exc:
        print(f"autofreeze: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        ck = getattr(args, "checkpoint_dir", None)
        where = (f"the last checkpoint is in {ck}: continue with the same command and --resume" if ck else
                 "no --checkpoint-dir was given, so there is nothing to resume from")
        print(f"autofreeze: interrupted; {where}", file=sys.stderr)
        return 130
    errors = [r["save_error"] for r in reports if r.get("save_error")]
    if errors:  # the run trained and its report is written; only the model could not be saved
        print("autofreeze: error: " + "; ".join(errors) + f" (the report is in {args.out})", file=sys.stderr)
        return 1
    return 0


def _configs(args) -> List[FinetuneConfig]:
    """The run's configurations, every one checked (values, then output locations) before any
    trains: a typo in the second mode of a comparison must not cost the first run."""
    if args.cmd == "finetune":
        _warn_unused_policy_options(args, [args.mode])
        cfgs = [_config(args, args.mode)]
    else:
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        if not modes:
            raise ValueError("--modes: name at least one mode")
        _warn_unused_policy_options(args, modes)
        cfgs = [_config(args, m, per_mode_dirs=True) for m in modes]
        if any(wants_val_slice(c) for c in cfgs) and not any(c.data.val or c.data.val_fraction for c in cfgs):
            for c in cfgs:  # every mode trains on the same rows: the slice is held out for all of them
                c.data.val_fraction = DEFAULT_FRACTION
    for cfg in cfgs:
        check_outputs(cfg, args.out)
    return cfgs


def info() -> int:
    """``autofreeze info``: :func:`~autofreeze_ext.backend_info` for a person."""
    from ._backend import backend_info

    b = backend_info()
    io = b["cache_io"]
    print(f"torch {b['torch']}, CUDA device: {'yes' if b['cuda_available'] else 'no'}")
    print(f"compiled core: {'loaded' if b['compiled'] else 'not loaded'}"
          + (f" (CUDA kernels compiled: {'yes' if b['compiled_with_cuda'] else 'no'})" if b["compiled"] else ""))
    print(f"grad_stats: cpu={b['grad_stats']['cpu']}, cuda={b['grad_stats']['cuda']}")
    print(f"activation cache I/O: {io['engine']}, io_uring compiled: {'yes' if io['uring_compiled'] else 'no'}, "
          f"crc32c: {io['crc32c']}")
    for line in b["missing"]:
        print(f"missing: {line}")
    if not b["missing"]:
        print("nothing missing for this machine")
    return 0


def launch(nproc: int, max_restarts: int, command: List[str]) -> int:
    """torchrun ``command`` on ``nproc`` workers; relaunch while the run asks for another count."""
    import subprocess

    if not command or command[0] != "finetune":
        print("autofreeze: error: launch runs `finetune ARGS...`", file=sys.stderr)
        return 2
    ck = next((command[i + 1] for i, a in enumerate(command[:-1]) if a == "--checkpoint-dir"), None)
    if ck is None:
        print("autofreeze: error: launch needs --checkpoint-dir (the planner scales through a checkpoint)",
              file=sys.stderr)
        return 2
    request = os.path.join(ck, "scale_request.json")
    if os.path.exists(request):
        os.remove(request)  # a stale request from an earlier job
    while True:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "--max-restarts", str(max_restarts), "-m", "autofreeze_ext.cli", *command]
        print(f"autofreeze launch: {nproc} worker(s)", file=sys.stderr, flush=True)
        rc = subprocess.call(cmd)
        if rc != 0 or not os.path.exists(request):
            return rc
        with open(request) as f:
            nproc = int(json.load(f)["world_size"])
        os.remove(request)
        if "--resume" not in command:
            command = [*command, "--resume"]


def _shutdown_distributed(clean: bool) -> bool:
    """Tear the process group down before the interpreter exits (its threads otherwise may
    abort the process at exit); after a clean run, wait for the other ranks first. True when
    there was a process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    try:
        if clean:
            dist.barrier()
    finally:
        dist.destroy_process_group()
    return True


def _exit_worker(rc: int) -> None:
    """End a torchrun worker whose work is done and written without interpreter finalization:
    objects still holding the gloo process group (DDP's reducer) can be destroyed during it
    while gloo's threads hold work items, which aborts the process ("terminate called without
    an active exception": 3 times in about 75 torchrun launches of the test suite here;
    pytorch/pytorch#190489) and makes torchrun report a finished run as failed."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    sys.exit(main())
