"""The training heap setting: freed large blocks are reused instead of faulted in again."""

import os
import subprocess
import sys
import textwrap

import pytest

from bitvote.train import heap

_PROBE = textwrap.dedent("""
    import resource
    import torch
    from bitvote.train import heap
    applied = heap.keep_freed_memory()
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    late = 0
    for step in range(12):  # a step's blocks of 64, 32 and 48 MB: above glibc's largest mmap threshold
        f0 = faults()
        a = torch.empty(1 << 24).fill_(1.0)
        b = torch.empty(1 << 23).fill_(2.0)
        c = torch.ones(1000)
        del a
        d = torch.empty(3 << 22).fill_(3.0)
        del b, c, d
        if step >= 8:
            late += faults() - f0
    print(int(applied), late)
""")


def _probe(keep: str):
    env = {**os.environ, "BITVOTE_KEEP_HEAP": keep, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    applied, faults = out.stdout.split()
    return bool(int(applied)), int(faults)


def test_kept_heap_reuses_a_freed_block_without_page_faults():
    applied, faults = _probe("1")
    if not applied:
        pytest.skip("not glibc: the setting does nothing here")
    # each step's blocks are 36864 pages of 4 KB: with the setting the last four steps fault in
    # at most part of one step's (glibc's aligned blocks settle into place over the first steps)
    assert faults < 16384
    applied_off, faults_off = _probe("0")
    assert not applied_off
    # glibc's own choice maps it afresh: every page again (fewer where the kernel gives huge pages)
    assert faults_off > faults


def test_opt_out_leaves_the_allocator_alone(monkeypatch):
    monkeypatch.setenv("BITVOTE_KEEP_HEAP", "0")
    monkeypatch.setattr(heap, "_applied", False)
    assert not heap.wanted()
    assert heap.keep_freed_memory() is False
