"""Where a run writes, checked before anything trains: a finished run's work must not be lost
to a bad output path at its end."""
from __future__ import annotations

import glob
import logging
import os
from typing import Optional

log = logging.getLogger("autofreeze_ext")


def check_folder(path: str, option: str) -> None:
    """``path`` can take the run's files: created when missing, a probe file written and removed.
    ``ValueError`` naming the option and the fix otherwise."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{option} {path}: a file of that name exists; name a folder")
    probe = os.path.join(path, f".autofreeze-probe-{os.getpid()}")
    try:
        os.makedirs(path, exist_ok=True)
        with open(probe, "w") as f:
            f.write("probe")
        os.remove(probe)
    except OSError as exc:
        raise ValueError(f"{option} {path}: cannot write there ({exc.strerror or exc}); choose a writable "
                         "folder") from None


def check_outputs(cfg, out: Optional[str] = None) -> None:
    """Every output location of a run (``--out``, ``--save-model``, ``--checkpoint-dir``) before
    anything loads; a ``--save-model`` folder that already holds files is refused unless
    ``--overwrite``; stale temporary files a killed checkpoint write left are removed."""
    if out:
        check_folder(out, "--out")
    if cfg.run.save_model:
        folder = cfg.run.save_model
        if os.path.isdir(folder) and os.listdir(folder) and not cfg.run.overwrite:
            raise ValueError(f"--save-model {folder}: the folder is not empty; pass --overwrite to replace what "
                             "it holds, or choose an empty folder")
        check_folder(folder, "--save-model")
    if cfg.run.checkpoint_dir:
        check_folder(cfg.run.checkpoint_dir, "--checkpoint-dir")
        remove_stale_temporaries(cfg.run.checkpoint_dir)


def remove_stale_temporaries(folder: str) -> None:
    """Temporary files of atomic writes (``NAME.tmpPID``) whose process is gone (a kill -9 during
    a checkpoint write): removed."""
    for tmp in glob.glob(os.path.join(folder, "*.tmp*")):
        pid = tmp.rsplit(".tmp", 1)[1]
        if pid.isdigit() and not _alive(int(pid)):
            os.remove(tmp)
            log.info("removed %s, left by an interrupted write", tmp)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
