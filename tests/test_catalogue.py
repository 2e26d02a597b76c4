"""The generated catalogue: every option of every command, fed values that cannot be right.

For each command (walked from the real parser, so a new option is covered the day it is
added) and each option, bad values follow from the option's validating type: 0, negative,
nan, inf, huge, empty, not a number, a missing path, a folder where a file goes and the
reverse, a folder that does not exist or is read-only. Every case must end with exit 2 and
one line starting ``bitvote: error:`` that names the option, no traceback, no file created,
and the command's work never started (its function is replaced by a sentinel that records a
call). Runs in-process: the whole catalogue takes a few seconds.
"""

import argparse
import os
from pathlib import Path

import pytest

import bitvote.cli as cli
from bitvote.cli import args as A

BASE = {  # the smallest valid command line of each command (the bad option is appended)
    "models": ["models"],
    "voter": ["voter", "mv"],
    "train": ["train", "--out", "{tmp}/newrun"],
    "eval": ["eval", "{ckpt}"],
    "demo": ["demo", "--out", "{tmp}/demo"],
    "convert": ["convert", "{ckpt}", "--voter", "mv"],
    "reproduce": ["reproduce", "--out", "{tmp}/repro"],
    "compile": ["compile", "{ckpt}", "--out", "{tmp}/m.bvm"],
    "run": ["run", "{ckpt}", "--data", "synthetic:2"],
    "verify": ["verify", "{ckpt}", "--data", "synthetic:2"],
    "bench": ["bench"],
    "hw units": ["hw", "units", "--model", "reactnet18"],
    "hw rtl": ["hw", "rtl", "--n", "9", "--out", "{tmp}/rtl"],
    "hw synth": ["hw", "synth", "--n", "9"],
    "hw check": ["hw", "check", "--n", "9"],
    "hw report": ["hw", "report", "{ckpt}"],
    "export": ["export", "{ckpt}", "--format", "onnx", "--out", "{tmp}/m.onnx"],
    "data pack": ["data", "pack", "{folder}", "--out", "{tmp}/c.bvd"],
    "data info": ["data", "info", "{ckpt}"],
    "search": ["search", "{ckpt}", "--budget", "0.5", "--out", "{tmp}/search"],
    "frontier": ["frontier", "{ckpt}", "--out", "{tmp}/frontier"],
}

HUGE = "1" + "0" * 30


def bad_values(t):
    """Values the validating type ``t`` must refuse."""
    ints = ["nan", "1.5", "", "abc", HUGE]
    if hasattr(t, "lo"):  # a bounded count
        return [str(t.lo - 1), str(t.hi + 1), *ints]
    if hasattr(t, "hi"):  # a bounded positive number
        return ["0", "-1", "nan", "inf", "", "abc", f"{t.hi * 10:g}"]
    return {
        A.positive_int: ["0", "-3", *ints],
        A.nonneg_int: ["-3", *ints],
        A.seed: ["-1", "nan", "", "abc", str(2**32)],
        A.positive_float: ["0", "-1", "nan", "inf", "-inf", "", "abc", "1e999"],
        A.nonneg_float: ["-1", "nan", "inf", "", "abc", "1e999"],
        A.fraction: ["1", "-0.1", "nan", "inf", "", "abc"],
        A.pad_value: ["0.5", "2", "nan", "", "abc"],
        A.device: ["", "tpu", "cuda:x"],
        A.text: ["", "  ", "a\nb"],
        A.input_file: ["{tmp}/missing.pt", "{folder}", ""],
        A.input_path: ["{tmp}/missing", ""],
        A.output_file: ["", "{folder}", "{tmp}/nofolder/x.out", "{afile}/x.out", "{readonly}/x.out", os.devnull],
        A.output_dir: ["", "{afile}", "{afile}/sub", "{readonly}/sub", os.devnull],
        A.engine_data: ["", "{tmp}/missing", "{tmp}/missing.pt", "synthetic:0", "synthetic:-3", "synthetic:x",
                        "{afile}"],
    }.get(t)


def _commands(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
                    yield from _commands(sub, prefix + (name,))
                else:
                    yield " ".join(prefix + (name,)), sub


def _cases():
    cases = []
    for cmd, sub in _commands(cli.build_parser()):
        for a in sub._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            opt = a.option_strings[-1] if a.option_strings else None
            if a.nargs == 0:  # a flag: a value attached to it is refused
                cases.append((cmd, opt, "x", True))
                continue
            values = bad_values(a.type) or []
            if a.choices is not None:
                values = values or ["bogus", ""]
            elif not values:
                values = ["abc", ""] if a.type in (int, float) else []
            assert values, f"{cmd} {opt or a.dest}: no validating type (add one from bitvote.cli.args)"
            cases += [(cmd, opt or a.dest, v, False) for v in values]
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalogue")
    (root / "folder").mkdir()
    (root / "afile").write_text("a file\n")
    (root / "ckpt.pt").write_bytes(b"only has to exist: the command never starts")
    ro = root / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    yield {"tmp": str(root), "ckpt": str(root / "ckpt.pt"), "folder": str(root / "folder"),
           "afile": str(root / "afile"), "readonly": str(ro)}
    ro.chmod(0o755)


def _tree(root):
    return sorted(str(p) for p in Path(root).rglob("*"))


def _argv(cmd, opt, value, flag, w):
    base = [s.format(**w) for s in BASE[cmd]]
    value = value.format(**w)
    if opt is None or not opt.startswith("-"):  # a positional: replace the base's value(s) for it
        n_pos = {"eval": 1, "convert": 1, "compile": 1, "run": 1, "verify": 1, "voter": 1, "hw report": 1}.get(cmd, 0)
        head = len(cmd.split())
        base = base[:head] + base[head + n_pos:]
        return base[:head] + ["--", value] + base[head:] if value.startswith("-") else \
            base[:head] + [value] + base[head:]
    # drop the base's own use of this option, then give the bad value (attached, so "-inf" stays a value)
    cleaned, skip = [], False
    for s in base:
        if skip:
            skip = False
            continue
        if s == opt:
            skip = True
            continue
        cleaned.append(s)
    return cleaned + [f"{opt}={value}"]


def test_catalogue_size_and_coverage():
    """Every command is in it, and it is as large as docs/results.md says."""
    cmds = {c for c, *_ in CASES}
    assert cmds == set(BASE), cmds ^ set(BASE)
    assert len(CASES) >= 350, len(CASES)


RAN = []


@pytest.fixture(scope="module")
def sentinel_parser():
    """The real parser (built once), every command's work replaced by a call recorder."""
    p = cli.build_parser()
    for _, sub in _commands(p):
        sub.set_defaults(func=lambda args: RAN.append(args) or 0)
    return p


@pytest.mark.parametrize("cmd,opt,value,flag", CASES, ids=[f"{c}|{o}|{v!r}" for c, o, v, _ in CASES])
def test_refused_at_the_boundary(world, sentinel_parser, cmd, opt, value, flag, capsys, monkeypatch):
    RAN.clear()
    ran = RAN
    monkeypatch.setattr(cli, "build_parser", lambda: sentinel_parser)
    monkeypatch.chdir(world["tmp"])
    before = _tree(world["tmp"])
    argv = _argv(cmd, opt, value, flag, world)
    capsys.readouterr()
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2, (argv, err)
    assert not ran, f"{argv}: the command started"
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bitvote: error:"), (argv, err)
    if opt and opt.startswith("-"):
        assert opt in lines[0] or opt.lstrip("-") in lines[0], (argv, lines[0])
    assert _tree(world["tmp"]) == before, f"{argv} left files behind"
    assert os.access(world["readonly"], os.F_OK)
