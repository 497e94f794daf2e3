"""The README's command lines as written (and BENCHMARKS.md's): every `echoimage …` line in
their shell blocks names commands and options that exist and parses; those that only read
a catalogue run on a built one. (The Python example runs in tests/test_api.py.)"""

from __future__ import annotations

import re
import shlex
import warnings

import click
import pytest
from click.testing import CliRunner
from helpers import REPO

from echoimage.cli import cli

pytestmark = pytest.mark.usefixtures("no_network")

#: commands that read a catalogue and need nothing else (no file, URL or server)
READERS = {("index", "status"), ("index", "verify"), ("dedupe",), ("catalogue", "sources")}


def readme_commands() -> list[list[str]]:
    """The argument lists of the README's `echoimage` command lines (environment
    assignments, comments, redirections and `.venv/bin/` left out)."""
    text = "".join((REPO / name).read_text(encoding="utf-8")
                   for name in ("README.md", "BENCHMARKS.md"))
    found = []
    for block in re.findall(r"```(?:sh|bash)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words = words[1:]
            if not words or words[0].rsplit("/", 1)[-1] != "echoimage":
                continue
            for stop in (">", "|", "&&", ";"):
                if stop in words:
                    words = words[:words.index(stop)]
            found.append(words[1:])
    return found


COMMANDS = readme_commands()


def test_the_readme_has_command_lines() -> None:
    assert len(COMMANDS) >= 30


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(a)[:60] for a in COMMANDS])
def test_readme_command_line_parses(args: list[str]) -> None:
    """Each line resolves to a command and its options and arguments parse (a path the
    example names may be missing here: that alone is not a mistake in the README)."""
    if "--help" in args:
        assert CliRunner().invoke(cli, args).exit_code == 0
        return
    cmd: click.Command = cli
    ctx: click.Context | None = None
    name, rest = "echoimage", list(args)
    while isinstance(cmd, click.Group):
        ctx = cmd.make_context(name, rest, parent=ctx)
        with warnings.catch_warnings():  # click 8.2 splits the rest in two, 9.0 will not
            warnings.simplefilter("ignore", DeprecationWarning)
            remaining = [*ctx.protected_args, *ctx.args]
        sub_name, sub, rest = cmd.resolve_command(ctx, remaining)
        assert sub is not None and sub_name is not None, args
        name, cmd = sub_name, sub
    try:
        cmd.make_context(name, rest, parent=ctx)
    except click.BadParameter as exc:
        if "does not exist" not in str(exc):
            raise


def test_readme_reader_commands_run(built_copy) -> None:
    """The README's commands that only read a catalogue run on a built one, exit 0."""
    ran = 0
    for args in COMMANDS:
        words = [a for a in args if not a.startswith("-")]
        if tuple(words[:2]) in READERS or tuple(words[:1]) in READERS:
            if "--crops" in args:
                continue  # slower, and covered by the dedupe tests
            result = CliRunner().invoke(
                cli, ["--data-dir", str(built_copy.settings.data_dir), *args])
            assert result.exit_code == 0, (args, result.output)
            ran += 1
    assert ran >= 6
