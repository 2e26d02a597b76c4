"""bitvote.cli: every command group registers, mistakes are one line and exit 2, the library
does the work (the commands are thin)."""

import pytest

from bitvote.cli import COMMAND_MODULES, build_parser, main

COMMANDS = ["models", "voter", "train", "eval", "demo", "convert", "reproduce", "compile", "run", "verify",
            "bench", "hw", "export", "data"]


def test_every_command_is_registered(capsys):
    assert main(["--help"]) == 0  # main returns its exit code, even for --help
    text = capsys.readouterr().out
    for cmd in COMMANDS:
        assert cmd in text, cmd
    assert len(COMMAND_MODULES) >= 5


@pytest.mark.parametrize("argv, match", [
    (["train", "--out", "x", "--weight-grad", "half"], "argument --weight-grad: invalid choice"),
    (["nonsense"], "invalid choice"),
    (["voter", "M3(", "-C", "4"], "bitvote: error:"),
])
def test_mistakes_are_one_line_exit_2(argv, match, capsys):
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's usage errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2
    assert match in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_voter_command_shows_the_resolved_hierarchy(capsys):
    assert main(["voter", "tap", "-C", "64", "--k", "3"]) == 0
    assert "M9(M64)" in capsys.readouterr().out


def test_train_flags_reach_the_config():
    args = build_parser().parse_args(["train", "--out", "o", "--weight-grad", "unscaled", "--epochs", "3"])
    assert args.weight_grad == "unscaled" and args.epochs == 3 and args.func.__module__ == "bitvote.cli.train"
