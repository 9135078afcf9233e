"""The mode grammar, parsed in one place: ``full``, ``static:K``, ``static:half``, ``static:all``,
``static:K@STEP``, ``autofreeze`` (the adaptive policy), any but ``full`` ending in ``+cache``.

The CLI's ``--mode``, :func:`~autofreeze_ext.policies.make_policy`, the configuration's checks
and the Trainer callback all read a mode through :func:`parse_mode`, so they accept the same
strings and say the same thing about a wrong one."""
from __future__ import annotations

from dataclasses import dataclass

MODES_HELP = "full | static:K | static:half | static:all | static:K@STEP | autofreeze (any but full may end in +cache)"


@dataclass(frozen=True)
class Mode:
    """A parsed mode: ``kind`` is ``full``, ``static`` or ``autofreeze``; a static mode freezes
    ``depth`` blocks (an integer, ``"half"`` or ``"all"``) from step ``at`` (0: from the start);
    ``cached``: the frozen prefix's outputs are cached (``+cache``)."""

    kind: str
    depth: object = 0
    at: int = 0
    cached: bool = False

    def blocks(self, num_blocks: int) -> int:
        """The static depth in blocks of a model with ``num_blocks`` blocks (checked)."""
        k = {"half": num_blocks // 2, "all": num_blocks}.get(self.depth, self.depth)
        if not 0 <= int(k) <= num_blocks:
            raise ValueError(f"mode static:{self.depth}: K must be in [0, {num_blocks}] (the model has {num_blocks} "
                             f"blocks); modes: {MODES_HELP}")
        return int(k)


def parse_mode(text: str) -> Mode:
    """``text`` as a :class:`Mode`; ``ValueError`` naming the grammar for anything else."""
    m = str(text).strip().lower()
    cached = m.endswith("+cache")
    base = m[: -len("+cache")] if cached else m
    if base == "full":
        if cached:
            raise ValueError("mode 'full+cache': nothing is frozen in full fine-tuning, so nothing can be cached")
        return Mode("full")
    if base == "autofreeze":
        return Mode("autofreeze", cached=cached)
    if base.startswith("static:"):
        k, _, at = base[len("static:"):].partition("@")
        try:
            depth = k if k in ("half", "all") else int(k)
            step = int(at) if at else 0
            if (isinstance(depth, int) and depth < 0) or step < 0 or (at == "" and "@" in base):
                raise ValueError
        except ValueError:
            raise ValueError(f"unknown mode {text!r}: static:K needs K, an integer >= 0, 'half' or 'all', and static:K@STEP "
                             "a STEP >= 0 (K blocks freeze once STEP optimizer steps are done)") from None
        return Mode("static", depth, step, cached)
    raise ValueError(f"unknown mode {text!r}; available modes: {MODES_HELP}")

