"""The ``autofreeze`` CLI with a fault-injection part: ``python tests/crash_cli.py --kill-at N
[--kill-rank R | --kill-agent] -- finetune ARGS...`` (also as a torchrun script). Production
code reads no environment variable for this; the tests install the part."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from autofreeze_ext import cli  # noqa: E402
from autofreeze_ext.training.parts import KillAt  # noqa: E402

if __name__ == "__main__":
    argv = sys.argv[1:]
    cut = argv.index("--")
    ap = argparse.ArgumentParser()
    ap.add_argument("--kill-at", type=int, required=True)
    ap.add_argument("--kill-rank", type=int, default=0)
    ap.add_argument("--kill-agent", action="store_true", help="kill the torchrun agent too (a lost node)")
    a = ap.parse_args(argv[:cut])
    sys.exit(cli.main(argv[cut + 1:], parts=[KillAt(a.kill_at, rank=a.kill_rank, agent=a.kill_agent)]))
