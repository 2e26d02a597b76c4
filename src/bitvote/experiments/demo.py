"""``bitvote demo``: the README's main job, a small version of the seed's protocol in a few CPU minutes.

It trains a reduced-width ReActNet-18 on a fixed subset of CIFAR-10, swaps a majority voter
into it (directly, then with BN re-estimated), retrains through the voter, does the same for
one hierarchical voter, and prints the seed-style table. It is ``bitvote reproduce``'s
``demo`` preset: every stage lives under ``out`` and is reused by a second ``bitvote demo``.
"""

from __future__ import annotations

import shlex
import sys

__all__ = ["run_demo"]


def run_demo(data=None, out="runs/demo", device="cpu", threads=None, download=True, quiet=False, **overrides) -> dict:
    """Run (or reuse) the demo protocol and print its table; returns ``{stage: row}``.

    Stages: ``baseline``, then ``<voter>.<mode>`` for modes converted / recalibrated /
    retrained. ``overrides`` change the preset (``width``, ``epochs``, ``subset``, ...).
    """
    from .reproduce import reproduce

    rows = reproduce("demo", data=data, out=out, device=device, threads=threads, download=download, quiet=quiet,
                     **overrides)
    res = {}
    for r in rows:
        res["baseline" if r["mode"] == "baseline" else f"{r['voter']}.{r['mode']}"] = r
    if not quiet:
        data_arg = f" --data {shlex.quote(str(data))}" if data else ""
        base = res["baseline"]["checkpoint"]
        print("\nGo further:")
        print(f"  bitvote eval {base}{data_arg}")
        print(f"  bitvote convert {base} --voter 'tap,groups=4' --tie first --recalibrate-bn 2000{data_arg}")
        print(f"  bitvote reproduce --preset cpu{data_arg} --threads 1 --out runs/reproduce-cpu")
        sys.stdout.flush()
    return res
