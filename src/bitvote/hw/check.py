"""Simulate a generated design with Icarus Verilog and compare every output with bitvote.voter.

The expected outputs come from :func:`bitvote.voter.reduce_votes` (the code the layers run),
fed with leaf sums, leaf valid counts and first-valid-term values computed here by plain
tensor sums over each leaf's flat term range; popcount designs are compared with the plain
count against the threshold (or the integer BN). Nothing here re-implements a vote.

Vectors (``vectors`` in total, a quarter of each kind):

* random terms at a random density, with random valid masks for zero padding;
* "near" vectors whose count of +1 terms is within +/-2 of half the valid terms;
* "boundary" vectors built top-down so that voters at every level sit at a tie or one vote
  off it, with whole leaves and subtrees abstaining when the design has a valid port;
* "border" masks: the valid pattern of a real k x k conv at the image border (missing kernel
  rows/columns, mapped to flat terms in the hierarchy's order), plus boundary terms.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch

from ..errors import BitvoteError
from ..voter import Hierarchy, reduce_votes
from .design import BETA_BITS, GAMMA_BITS, Design
from .rtl import generate

__all__ = ["CheckResult", "make_vectors", "expected", "simulate", "check", "require_tool"]

INSTALL_HINT = "install it with: apt-get update && apt-get install -y yosys iverilog"


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        raise BitvoteError(f"{name} not found on PATH: {INSTALL_HINT}")
    return path


@dataclass
class CheckResult:
    design: str
    vectors: int
    mismatches: int
    first_mismatch: Optional[str] = None
    netlist: bool = False

    def __str__(self):
        what = "gate netlist" if self.netlist else "RTL"
        s = f"{self.design} ({what}): {self.vectors} vectors, {self.mismatches} mismatches"
        return s + (f"; first: {self.first_mismatch}" if self.first_mismatch else "")


# --------------------------------------------------------------------------------------------
# Vectors
# --------------------------------------------------------------------------------------------


class _Tree:
    """Spans of every voter of a hierarchy: ``spans[li][j] = (lo, hi)`` children/terms."""

    def __init__(self, h: Hierarchy):
        self.h = h
        self.children = []
        for lv in h.levels:
            offs, o = [], 0
            for g in lv.groups:
                offs.append((o, o + g))
                o += g
            self.children.append(offs)


def _fill_leaf(z, v, lo, hi, want, valid_port, gen):
    m = hi - lo
    if want == "abstain":
        v[lo:hi] = 0
        z[lo:hi] = torch.randint(0, 2, (m,), generator=gen)
        return
    if valid_port and torch.rand((), generator=gen) < 0.5:
        nv = int(torch.randint(1, m + 1, (), generator=gen))
    else:
        nv = m
    if want == "tie" and nv % 2 and valid_port and nv > 1:
        nv -= 1
    pos = torch.randperm(m, generator=gen)[:nv] + lo
    v[lo:hi] = 0
    v[pos] = 1
    if want == "tie":
        ones = nv // 2 + (nv % 2) * int(torch.randint(0, 2, (), generator=gen))
    elif want == "+":
        ones = min(nv, nv // 2 + 1 + int(torch.randint(0, 2, (), generator=gen)))
    else:
        ones = max(0, (nv + 1) // 2 - 1 - int(torch.randint(0, 2, (), generator=gen)))
    z[lo:hi] = torch.randint(0, 2, (m,), generator=gen) * (1 - v[lo:hi])  # invalid terms: any value
    z[pos[torch.randperm(nv, generator=gen)[:ones]]] = 1


def _fill(tree: _Tree, li, j, want, z, v, valid_port, gen):
    lo, hi = tree.children[li][j]
    if li == 0:
        _fill_leaf(z, v, lo, hi, want, valid_port, gen)
        return
    g = hi - lo
    kids = list(range(lo, hi))
    if want == "abstain":
        wants = ["abstain"] * g
    else:
        n_abs = 0
        if valid_port and g > 1:
            n_abs = int(torch.randint(0, g, (), generator=gen)) if torch.rand((), generator=gen) < 0.4 else 0
            if want == "tie" and (g - n_abs) % 2:
                n_abs += 1 if n_abs < g - 1 else -1
        active = g - n_abs
        if want == "tie":
            n_plus = active // 2 + (active % 2) * int(torch.randint(0, 2, (), generator=gen))
        elif want == "+":
            n_plus = min(active, active // 2 + 1)
        else:
            n_plus = max(0, (active + 1) // 2 - 1)
        wants = ["+"] * n_plus + ["-"] * (active - n_plus) + ["abstain"] * n_abs
        # some children sit at their own tie, so their tie rule decides the vote above
        wants = [("tie" if w != "abstain" and torch.rand((), generator=gen) < 0.25 else w) for w in wants]
        wants = [wants[i] for i in torch.randperm(g, generator=gen).tolist()]
    for kid, w in zip(kids, wants):
        _fill(tree, li - 1, kid, w, z, v, valid_port, gen)


def _border_mask(d: Design, gen) -> torch.Tensor:
    """The valid pattern of a conv output at the image border (missing kernel rows/cols)."""
    k, n = d.k, d.n
    C = n // (k * k)
    ok = torch.ones(k, k, dtype=torch.long)
    r = int(torch.randint(0, k, (), generator=gen)) if k > 1 else 0
    if torch.rand((), generator=gen) < 0.5:
        ok[:r] = 0  # top rows
    else:
        ok[k - r:] = 0  # bottom rows
    c = int(torch.randint(0, k, (), generator=gen)) if k > 1 else 0
    if torch.rand((), generator=gen) < 0.5:
        ok[:, :c] = 0
    else:
        ok[:, k - c:] = 0
    tap_ok = ok.flatten()
    order = d.hier.order if d.hier is not None else "tap"
    i = torch.arange(n)
    tap = i // C if order == "tap" else i % (k * k)
    return tap_ok[tap]


def make_vectors(d: Design, count: int = 400, seed: int = 0):
    """``(z, valid)`` as long tensors of shape (count, n): term bits and validity."""
    gen = torch.Generator().manual_seed(seed)
    n = d.n
    Z = torch.zeros(count, n, dtype=torch.long)
    V = torch.ones(count, n, dtype=torch.long)
    tree = _Tree(d.hier) if d.hier is not None else None
    for r in range(count):
        kind = r % 4
        z, v = Z[r], V[r]
        if kind == 0:  # random
            p = float(torch.rand((), generator=gen))
            z.copy_((torch.rand(n, generator=gen) < p).long())
            if d.valid:
                q = float(torch.rand((), generator=gen))
                v.copy_((torch.rand(n, generator=gen) < q).long() if r % 8 else torch.zeros(n, dtype=torch.long))
        elif kind == 1 or tree is None:  # near half of the valid terms
            if d.valid and kind != 1:
                v.copy_(_border_mask(d, gen))
            elif d.valid:
                v.copy_((torch.rand(n, generator=gen) < 0.9).long())
            idx = v.nonzero().flatten()
            nv = len(idx)
            ones = max(0, min(nv, nv // 2 + int(torch.randint(-2, 3, (), generator=gen))))
            z.copy_(torch.randint(0, 2, (n,), generator=gen) * (1 - v))
            z[idx[torch.randperm(nv, generator=gen)[:ones]]] = 1
        else:  # boundary: ties at every level, abstaining subtrees
            top = d.hier.depth - 1
            choices = ["tie", "tie", "+", "-"] + (["abstain"] if d.valid and r % 16 == 2 else [])
            want = choices[int(torch.randint(0, len(choices), (), generator=gen))]
            _fill(tree, top, 0, want, z, v, d.valid, gen)
            if kind == 3 and d.valid:  # a real border pattern on top of it
                v.mul_(_border_mask(d, gen))
    if not d.valid:
        V.fill_(1)
    return Z, V


def _params(d: Design, Z, V, seed):
    """Runtime threshold / BN parameters near the decision boundary (popcount baselines)."""
    gen = torch.Generator().manual_seed(seed + 1)
    cnt = (Z * V).sum(1)
    count = len(Z)
    if d.epilogue == "threshold":
        W = max(1, d.n.bit_length())
        thr = cnt + torch.randint(-2, 3, (count,), generator=gen)
        rand = torch.randint(0, 2 ** W, (count,), generator=gen)
        thr = torch.where(torch.arange(count) % 4 == 0, rand, thr).clamp(0, 2 ** W - 1)
        return {"thr": thr}
    gmax = 2 ** (GAMMA_BITS - 1)
    gamma = torch.randint(-gmax, gmax, (count,), generator=gen)
    delta = torch.randint(-2, 3, (count,), generator=gen)
    beta = (-gamma * cnt + delta).clamp(-(2 ** (BETA_BITS - 1)), 2 ** (BETA_BITS - 1) - 1)
    rand = torch.randint(-(2 ** (BETA_BITS - 1)), 2 ** (BETA_BITS - 1), (count,), generator=gen)
    beta = torch.where(torch.arange(count) % 4 == 0, rand, beta)
    return {"gamma": gamma, "beta": beta}


# --------------------------------------------------------------------------------------------
# Expected outputs
# --------------------------------------------------------------------------------------------


def expected(d: Design, Z, V, params=None, hier: Optional[Hierarchy] = None) -> torch.Tensor:
    """What the design must output, per vector: from ``reduce_votes`` (or the plain count)."""
    if d.kind == "popcount":
        cnt = (Z * V).sum(1)
        if d.epilogue == "threshold":
            return (cnt >= params["thr"]).long()
        return (params["gamma"] * cnt + params["beta"] >= 0).long()
    h = hier if hier is not None else d.hier
    terms = (2 * Z - 1) * V  # +1 / -1, 0 where padded
    sizes = list(h.leaf_sizes)
    leaf_sums = torch.stack([c.sum(1) for c in terms.split(sizes, 1)], 1).double()
    leaf_valid = torch.stack([c.sum(1) for c in V.split(sizes, 1)], 1).double() if d.valid else None
    leaf_first = None
    if h.levels[0].tie.is_first:
        firsts = []
        for t, vv in zip(terms.split(sizes, 1), V.split(sizes, 1)):
            idx = vv.argmax(1, keepdim=True)  # first valid term (0 if none: that leaf abstains)
            firsts.append(t.gather(1, idx).squeeze(1))
        leaf_first = torch.stack(firsts, 1).double()
    out = reduce_votes(h, leaf_sums, leaf_valid, leaf_first, dim=-1)
    if h.root == "P":
        return out.round().long()
    return (out > 0).long()


# --------------------------------------------------------------------------------------------
# Simulation
# --------------------------------------------------------------------------------------------


def _bits(rows: torch.Tensor) -> str:
    """One binary string per row, bit i of the port = column i (MSB first in the file)."""
    return "\n".join("".join("1" if b else "0" for b in reversed(r.tolist())) for r in rows) + "\n"


def _twos(x: int, bits: int) -> str:
    return format(x & ((1 << bits) - 1), f"0{bits}b")


def _testbench(d: Design, count: int, top: str) -> str:
    n = d.n
    ports, mems, loads, drives = [], [], [], []

    def port(name, width, signed=False):
        mems.append(f"    reg [{width - 1}:0] m_{name} [0:{count - 1}];")
        ports.append(f"    reg {'signed ' if signed else ''}[{width - 1}:0] {name};")
        loads.append(f'        $readmemb("{name}.mem", m_{name});')
        drives.append(f"            {name} = m_{name}[i];")

    if d.xnor:
        port("a", n)
        port("w", n)
    else:
        port("z", n)
    if d.valid:
        port("valid", n)
    conns = ["a", "w"] if d.xnor else ["z"]
    conns += ["valid"] if d.valid else []
    if d.kind == "popcount":
        if d.epilogue == "threshold":
            port("thr", max(1, n.bit_length()))
            conns.append("thr")
        else:
            port("gamma", GAMMA_BITS, True)
            port("beta", BETA_BITS, True)
            conns += ["gamma", "beta"]
    if d.kind == "voter" and d.hier.root == "P":
        W = max(1, d.hier.levels[-1].groups[0].bit_length())
        out_decl, out = f"    wire signed [{W + 1}:0] s;", "s"
    else:
        out_decl, out = "    wire y;", "y"
    conns.append(out)
    conn = ", ".join(f".{c}({c})" for c in conns)
    return "\n".join([
        "`timescale 1ns/1ps",
        "module tb;",
        *ports, out_decl, *mems,
        "    integer i, f;",
        f"    {top} dut ({conn});",
        "    initial begin",
        *loads,
        '        f = $fopen("out.txt", "w");',
        f"        for (i = 0; i < {count}; i = i + 1) begin",
        *drives,
        "            #1;",
        f'            $fdisplay(f, "%0d", {out});',
        "        end",
        "        $fclose(f);",
        "        $finish;",
        "    end",
        "endmodule",
    ]) + "\n"


def simulate(d: Design, verilog: str, Z, V, params=None, top: Optional[str] = None, workdir=None) -> List[int]:
    """Run ``verilog`` (top module ``top``) under iverilog on the vectors; outputs per vector."""
    iverilog = require_tool("iverilog")
    vvp = require_tool("vvp")
    count = len(Z)
    gen = torch.Generator().manual_seed(12345)
    W = torch.randint(0, 2, Z.shape, generator=gen)
    A = 1 - (Z ^ W)  # z = XNOR(a, w)  <=>  a = XNOR(z, w)
    with tempfile.TemporaryDirectory(prefix="bitvote-hw-", dir=workdir) as tmp:
        t = Path(tmp)
        (t / "design.v").write_text(verilog)
        (t / "tb.v").write_text(_testbench(d, count, top or d.name))
        if d.xnor:
            (t / "a.mem").write_text(_bits(A))
            (t / "w.mem").write_text(_bits(W))
        else:
            (t / "z.mem").write_text(_bits(Z))
        if d.valid:
            (t / "valid.mem").write_text(_bits(V))
        if params:
            if "thr" in params:
                Wt = max(1, d.n.bit_length())
                (t / "thr.mem").write_text("".join(_twos(int(x), Wt) + "\n" for x in params["thr"]))
            else:
                (t / "gamma.mem").write_text("".join(_twos(int(x), GAMMA_BITS) + "\n" for x in params["gamma"]))
                (t / "beta.mem").write_text("".join(_twos(int(x), BETA_BITS) + "\n" for x in params["beta"]))
        r = subprocess.run([iverilog, "-g2005", "-o", "sim", "tb.v", "design.v"], cwd=t, capture_output=True, text=True)
        if r.returncode:
            raise BitvoteError(f"iverilog failed on {d.name}: {r.stderr.strip().splitlines()[:1]}")
        r = subprocess.run([vvp, "-n", "sim"], cwd=t, capture_output=True, text=True)
        if r.returncode:
            raise BitvoteError(f"vvp failed on {d.name}: {r.stderr.strip().splitlines()[:1]}")
        lines = (t / "out.txt").read_text().split()
    if len(lines) != count:
        raise BitvoteError(f"simulation of {d.name} gave {len(lines)} outputs for {count} vectors")
    return [int(x) if x.lstrip("-").isdigit() else -999 for x in lines]  # x/z -> mismatch


def check(d: Design, vectors: int = 400, seed: int = 0, netlist: Optional[Path] = None,
          reference: Optional[Hierarchy] = None) -> CheckResult:
    """Simulate ``d`` (its RTL, or a synthesized ``netlist``) and count mismatches.

    ``reference`` replaces the hierarchy the outputs are compared with (the tests use it to
    show that a wrong tie rule at any level is caught).
    """
    Z, V = make_vectors(d, vectors, seed)
    params = _params(d, Z, V, seed) if d.kind == "popcount" else None
    exp = expected(d, Z, V, params, reference).tolist()
    verilog = netlist.read_text() if netlist is not None else generate(d)
    got = simulate(d, verilog, Z, V, params)
    bad = [i for i, (e, g) in enumerate(zip(exp, got)) if e != g]
    first = None
    if bad:
        i = bad[0]
        first = f"vector {i} (kind {['random', 'near', 'boundary', 'border'][i % 4]}): expected {exp[i]}, got {got[i]}"
    return CheckResult(d.name, vectors, len(bad), first, netlist is not None)
