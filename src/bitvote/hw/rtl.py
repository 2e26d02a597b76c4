"""Verilog for one output unit: XNOR array, then a popcount baseline or the voter tree.

The generated file is flat, synthesizable Verilog-2005 in four parts:

* ``bv_fa`` and ``bv_popcount_<m>``: a Wallace-style full-adder (3:2) compressor tree per leaf
  width m (the full adder shares its propagate term), finished by one 2-row ``+``. This is the
  counter of the synthesis anchors (``notes/synthesis-anchors.md``), so numbers compare.
* ``bv_vote``: one majority voter, parameterised by its tie rule (``TIE`` = 1, -1, or 0 for
  ``first``) and whether it is the root. It compares ``2 * pos`` with ``act`` (the inputs
  that do not abstain), so ``s = 2 * pos - act`` is the voter's sum; ``act == 0`` abstains.
* ``bv_first``: the first non-abstaining input, for ``first`` ties.
* the top module: flat term i is input bit i (SPEC.md, "Units"), ``valid[i] = 0`` marks a
  zero-padded term (only generated for zero padding; with +/-1 padding every term is valid and
  ``act`` is a constant that synthesis folds away). Levels follow ``Hierarchy.levels``
  bottom-up; a ``P`` root outputs the signed sum of its children's votes.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

from .design import BETA_BITS, GAMMA_BITS, Design

__all__ = ["generate", "write", "popcount_fa_count"]


def _w(m: int) -> int:
    """Bits of a count of 0..m."""
    return max(1, int(m).bit_length())


# --------------------------------------------------------------------------------------------
# Library modules
# --------------------------------------------------------------------------------------------

_FA = """\
// Full adder sharing the propagate term: s = a ^ b ^ c, co = majority(a, b, c).
module bv_fa (
    input  wire a,
    input  wire b,
    input  wire c,
    output wire s,
    output wire co
);
    wire p = a ^ b;
    assign s  = p ^ c;
    assign co = (a & b) | (p & c);
endmodule
"""

_VOTE = """\
// One majority voter over inputs summarised by two counts: pos (inputs voting +1) and act
// (inputs that do not abstain). Its sum is s = 2*pos - act: y = 1 (+1) if s > 0, 0 (-1) if
// s < 0, the tie rule if s == 0. TIE: 1 -> +1, -1 -> -1, 0 -> 'first' (the first
// non-abstaining input's vote). act == 0 abstains (a = 0); a root that abstains outputs its
// tie value (+1 under 'first'), SPEC.md "Output modes".
module bv_vote #(
    parameter integer W    = 2,  // width of pos and act
    parameter integer TIE  = 1,
    parameter integer ROOT = 0
) (
    input  wire [W-1:0] pos,
    input  wire [W-1:0] act,
    input  wire         first,
    output wire         y,
    output wire         a
);
    wire [W:0] twice = {pos, 1'b0};
    wire [W:0] total = {1'b0, act};
    wire tie_value = (TIE == 0) ? first : (TIE > 0);
    wire abstain_value = (ROOT != 0) && (TIE >= 0);
    assign a = |act;
    assign y = (twice > total) | ((twice == total) & (a ? tie_value : abstain_value));
endmodule
"""

_FIRST = """\
// The vote of the first input (lowest index) that does not abstain; 1 when all abstain.
module bv_first #(
    parameter integer M = 2
) (
    input  wire [M-1:0] act,
    input  wire [M-1:0] bits,
    output reg          f
);
    integer i;
    always @* begin
        f = 1'b1;
        for (i = M - 1; i >= 0; i = i - 1)
            if (act[i]) f = bits[i];
    end
endmodule
"""


def popcount_module(m: int) -> str:
    """``bv_popcount_<m>``: Wallace-style FA tree plus one final 2-row add."""
    W = _w(m)
    cols: List[List[str]] = [[f"x[{i}]" for i in range(m)]] + [[] for _ in range(W - 1)]
    body, wires = [], []
    fa = 0
    stage = 0
    while max(len(c) for c in cols) > 2:
        stage += 1
        body.append(f"    // stage {stage}")
        new: List[List[str]] = [[] for _ in cols]
        for c, bits in enumerate(cols):
            i = 0
            while len(bits) - i >= 3:
                a, b, cc = bits[i : i + 3]
                i += 3
                s = f"s{fa}"
                if c + 1 < W:
                    co = f"c{fa}"
                    wires += [s, co]
                    body.append(f"    bv_fa fa{fa} (.a({a}), .b({b}), .c({cc}), .s({s}), .co({co}));  // weight {1 << c}")
                    new[c + 1].append(co)
                else:  # top bit: the carry would be >= 2^W > m, never set
                    wires.append(s)
                    body.append(f"    assign {s} = {a} ^ {b} ^ {cc};  // weight {1 << c}, carry out of range")
                new[c].append(s)
                fa += 1
            new[c].extend(bits[i:])
        cols = new
    row_a = [c[0] if len(c) > 0 else "1'b0" for c in cols]
    row_b = [c[1] if len(c) > 1 else "1'b0" for c in cols]
    decl = "".join(f"    wire {w};\n" for w in wires)
    cat = lambda row: "{" + ", ".join(reversed(row)) + "}"  # noqa: E731
    return (
        f"// Population count of {m} bits: {fa} full adders in {stage} stage(s), then one add.\n"
        f"module bv_popcount_{m} (\n"
        f"    input  wire [{m - 1}:0] x,\n"
        f"    output wire [{W - 1}:0] cnt\n"
        f");\n"
        f"{decl}" + "\n".join(body) + ("\n" if body else "")
        + f"    wire [{W - 1}:0] row_a = {cat(row_a)};\n"
        f"    wire [{W - 1}:0] row_b = {cat(row_b)};\n"
        f"    assign cnt = row_a + row_b;\n"
        f"endmodule\n"
    )


def popcount_fa_count(m: int) -> int:
    """Full adders (incl. top-bit XOR3s) in ``bv_popcount_<m>``: the structural count."""
    return popcount_module(m).count("bv_fa fa") + popcount_module(m).count("carry out of range")


# --------------------------------------------------------------------------------------------
# Top module
# --------------------------------------------------------------------------------------------


def _ports(d: Design, extra: List[str]) -> List[str]:
    n = d.n
    ports = []
    if d.xnor:
        ports += [f"input  wire [{n - 1}:0] a,      // activations, flat term i = bit i",
                  f"input  wire [{n - 1}:0] w,      // weights (runtime)"]
    else:
        ports += [f"input  wire [{n - 1}:0] z,      // XNOR outputs (1 = +1), flat term i = bit i"]
    if d.valid:
        ports += [f"input  wire [{n - 1}:0] valid,  // 0 = zero-padded term (abstains)"]
    return ports + extra


def _head(d: Design) -> List[str]:
    lines = []
    if d.xnor:
        lines += ["    // XNOR array: z[i] = 1 when a[i] * w[i] = +1", f"    wire [{d.n - 1}:0] z = ~(a ^ w);"]
    if d.valid:
        lines += [f"    wire [{d.n - 1}:0] zv = z & valid;  // valid terms voting +1"]
    return lines


def _module(name: str, ports: List[str], body: List[str]) -> str:
    # move trailing comments after the comma so the port list stays valid Verilog
    fixed = []
    for i, x in enumerate(ports):
        code, _, comment = x.partition("//")
        sep = "," if i < len(ports) - 1 else ""
        fixed.append(f"    {code.rstrip().rstrip(',')}{sep}" + (f"  // {comment.strip()}" if comment else ""))
    p = "\n".join(fixed)
    return f"module {name} (\n{p}\n);\n" + "\n".join(body) + "\nendmodule\n"


def _top_xnor(d: Design) -> str:
    n = d.n
    return (f"// XNOR array alone: n = {n} gates with runtime weights.\n"
            f"module {d.name} (\n    input  wire [{n - 1}:0] a,\n    input  wire [{n - 1}:0] w,\n"
            f"    output wire [{n - 1}:0] z\n);\n    assign z = ~(a ^ w);\nendmodule\n")


def _top_popcount(d: Design) -> str:
    n, W = d.n, _w(d.n)
    src = "zv" if d.valid else "z"
    if d.epilogue == "threshold":
        extra = [f"input  wire [{W - 1}:0] thr,    // folded BN threshold (runtime, per output channel)",
                 "output wire        y         // 1 = +1: cnt >= thr"]
        tail = ["    assign y = cnt >= thr;"]
    else:
        P = max(GAMMA_BITS + W + 1, BETA_BITS) + 1
        extra = [f"input  wire signed [{GAMMA_BITS - 1}:0] gamma,  // BN scale (fixed point)",
                 f"input  wire signed [{BETA_BITS - 1}:0] beta,   // BN shift (fixed point)",
                 "output wire        y         // 1 = +1: gamma * cnt + beta >= 0"]
        tail = [f"    localparam integer P = {P};",
                f"    wire signed [P-1:0] g = {{{{(P-{GAMMA_BITS}){{gamma[{GAMMA_BITS - 1}]}}}}, gamma}};",
                f"    wire signed [P-1:0] b = {{{{(P-{BETA_BITS}){{beta[{BETA_BITS - 1}]}}}}, beta}};",
                f"    wire signed [P-1:0] c = {{{{(P-{W}){{1'b0}}}}, cnt}};",
                "    wire signed [P-1:0] acc = g * c + b;",
                "    assign y = ~acc[P-1];"]
    body = _head(d) + [f"    wire [{W - 1}:0] cnt;", f"    bv_popcount_{n} count ({src}, cnt);"] + tail
    return f"// {d.describe()}\n" + _module(d.name, _ports(d, extra), body)


def _top_voter(d: Design) -> str:
    h = d.hier
    last = h.depth - 1
    body = _head(d)
    prev_bits, prev_act = ("zv" if d.valid else "z"), ("valid" if d.valid else None)
    W_root = _w(h.levels[-1].groups[0])
    if h.root == "P":
        out = [f"output wire signed [{W_root + 1}:0] s  // sum of the root's children's votes (P root)"]
    else:
        out = ["output wire        y         // the vote: 1 = +1, 0 = -1"]
    for li, lv in enumerate(h.levels):
        V = len(lv.groups)
        tie = lv.tie.code
        is_root = li == last
        what = "leaf voters over terms" if li == 0 else "voters over the level below"
        body.append(f"\n    // level {li} ({'root' if is_root else what}): {V} voter(s), "
                    f"fan-in {', '.join(map(str, sorted(set(lv.groups))))}, tie {lv.tie}")
        if not (is_root and h.root == "P"):
            body.append(f"    wire [{V - 1}:0] vote{li};")
            if is_root or not d.valid:  # nothing reads it: all inputs valid, or the root
                why = "an abstaining root takes its tie value" if is_root else "every voter has valid inputs"
                body.append(f"    /* verilator lint_off UNUSEDSIGNAL */ wire [{V - 1}:0] act{li};  "
                            f"/* verilator lint_on UNUSEDSIGNAL */  // unused: {why}")
            else:
                body.append(f"    wire [{V - 1}:0] act{li};")
        uniform = lv.uniform and V > 1
        if uniform:
            g = lv.groups[0]
            body.append(f"    genvar j{li};")
            body.append(f"    generate for (j{li} = 0; j{li} < {V}; j{li} = j{li} + 1) begin : level{li}")
            body += _voter_block(d, li, g, f"j{li} * {g}", f"j{li}", prev_bits, prev_act, tie, is_root, "        ")
            body.append("    end endgenerate")
        else:
            off = 0
            for j, g in enumerate(lv.groups):
                body += _voter_block(d, li, g, str(off), str(j), prev_bits, prev_act, tie, is_root, "    ",
                                     prefix=f"l{li}v{j}_")
                off += g
        # bits seen by the level above: votes masked by act (abstainers count as neither)
        if d.valid and not is_root:
            body.append(f"    wire [{V - 1}:0] votev{li} = vote{li} & act{li};")
            prev_bits, prev_act = f"votev{li}", f"act{li}"
        else:
            prev_bits, prev_act = f"vote{li}", (f"act{li}" if d.valid else None)
        if is_root and h.root == "P":
            break
    if h.root == "P":
        body.append(f"    assign s = $signed({{1'b0, l{last}v0_pos, 1'b0}}) - $signed({{2'b00, l{last}v0_act}});")
    else:
        body.append(f"    assign y = vote{last}[0];")
    return f"// {d.describe()}\n" + _module(d.name, _ports(d, out), body)


def _voter_block(d, li, g, off, j, bits, act, tie, is_root, ind, prefix=""):
    """One voter: count the +1 inputs (and the non-abstaining ones), then vote."""
    W = _w(g)
    pos, cnt, first = f"{prefix}pos", f"{prefix}act", f"{prefix}first"
    sel = lambda v: f"{v}[{off} +: {g}]"  # noqa: E731
    p_root = is_root and d.hier.root == "P"
    L = [f"{ind}wire [{W - 1}:0] {pos}, {cnt};"] + ([] if p_root else [f"{ind}wire {first};"]) + [
         f"{ind}bv_popcount_{g} {prefix}count_pos ({sel(bits)}, {pos});"]
    if act is not None:
        L.append(f"{ind}bv_popcount_{g} {prefix}count_act ({sel(act)}, {cnt});")
        if p_root:
            pass
        elif tie == 0:
            L.append(f"{ind}bv_first #(.M({g})) {prefix}pick ({sel(act)}, {sel(bits)}, {first});")
        else:
            L.append(f"{ind}assign {first} = 1'b0;  // unused: tie is not 'first'")
    else:
        L.append(f"{ind}assign {cnt} = {W}'d{g};  // every input is valid")
        if not p_root:
            L.append(f"{ind}assign {first} = {bits}[{off}];" if tie == 0
                     else f"{ind}assign {first} = 1'b0;  // unused: tie is not 'first'")
    if p_root:
        return L
    L.append(f"{ind}bv_vote #(.W({W}), .TIE({tie}), .ROOT({1 if is_root else 0})) "
             f"{prefix}voter (.pos({pos}), .act({cnt}), .first({first}), .y(vote{li}[{j}]), .a(act{li}[{j}]));")
    return L


# --------------------------------------------------------------------------------------------


def generate(d: Design) -> str:
    """The Verilog text of design ``d`` (library modules first, then the top module)."""
    if d.kind == "xnor":
        return "`default_nettype none\n\n" + _top_xnor(d)
    if d.kind == "popcount":
        widths = {d.n}
        top = _top_popcount(d)
        lib = [_FA]
    else:
        widths = set()
        for li, lv in enumerate(d.hier.levels):
            widths |= set(lv.groups)
        top = _top_voter(d)
        lib = [_FA, _VOTE] + ([_FIRST] if d.valid and any(t.is_first for t in d.hier.ties) else [])
    pcs = [popcount_module(m) for m in sorted(widths)]
    head = (f"// Generated by `bitvote hw rtl`: {d.describe()}.\n"
            f"// Semantics: SPEC.md (bit 1 = +1; flat term i = input bit i; ties and abstention per level).\n"
            "`default_nettype none\n")
    return "\n".join([head] + lib + pcs + [top])


def write(d: Design, out_dir) -> Path:
    """Write ``<out_dir>/<name>.v`` and return its path."""
    from ..io import atomic_write_bytes
    from ..errors import BitvoteError

    out = Path(out_dir)
    path = out / f"{d.name}.v"
    if path.is_dir():
        raise BitvoteError(f"cannot write {path}: a folder of that name is in the way")
    atomic_write_bytes(path, generate(d).encode())  # a full disk is one line, never half a module
    return path
