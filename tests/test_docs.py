"""The docs keep up with the CLI: every command and option is in README.md or RUNBOOK.md, with --help text."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from migrate.cli import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "README.md").read_text() + (ROOT / "RUNBOOK.md").read_text()


def commands() -> list[tuple[str, click.Command]]:
    return sorted(cli.commands.items())


@pytest.mark.parametrize("name,command", commands())
def test_every_command_and_option_is_documented(name, command):
    assert f"redis-migrate {name}" in DOCS or f"`{name} " in DOCS, f"command {name} is not in README/RUNBOOK"
    for param in command.params:
        for option in param.opts:
            if option.startswith("--") and option not in ("--help",):
                assert option in DOCS, f"{name} {option} is not in README.md or RUNBOOK.md"


@pytest.mark.parametrize("name,command", commands())
def test_every_command_has_help_text(name, command):
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0
    assert command.help and len(command.help.strip()) > 20
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"{name} {param.opts} has no help text"


def test_version_and_group_help():
    assert CliRunner().invoke(cli, ["--version"]).output.startswith("redis-migrate, version")
    assert "cutover" in CliRunner().invoke(cli, ["--help"]).output


@pytest.mark.parametrize("doc", ["README.md", "RUNBOOK.md"])
def test_doc_links_stay_inside_the_repository(doc):
    """A link or path to a file outside the repository is broken for everyone who clones it."""
    text = (ROOT / doc).read_text()
    assert "../" not in text, f"{doc} points outside the repository"
    for target in re.findall(r"\]\(([^)#\s]+)", text):
        assert "://" not in target, f"{doc} links outside the repository: {target}"
        assert (ROOT / target).resolve().is_relative_to(ROOT) and (ROOT / target).exists(), f"{doc}: {target}"


def test_the_runbook_counts_the_commands_there_are():
    stated = [int(n) for n in re.findall(r"all (\d+) commands", DOCS)]
    assert stated, "RUNBOOK.md no longer says how many commands the secrets test covers"
    assert stated == [len(cli.commands)] * len(stated), \
        f"the docs say {stated} commands, the CLI has {len(cli.commands)}"
