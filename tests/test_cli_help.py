"""Every `eldergate` command says in one line what it does and shows an example: the parser
tree is walked, so a new sub-command without them fails here."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from drivers.sim import simulate_cli
from gateway import cli


def walk(
    parser: argparse.ArgumentParser, path: str
) -> Iterator[tuple[str, argparse.ArgumentParser, str | None]]:
    """(command path, parser, its summary in the parent's list) for the tree under `parser`."""
    yield path, parser, None
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {choice.dest: choice.help for choice in action._choices_actions}
            for name, child in action.choices.items():
                for sub_path, sub, summary in walk(child, f"{path} {name}"):
                    yield sub_path, sub, summary if sub is not child else summaries.get(name)


def commands() -> list[tuple[str, argparse.ArgumentParser, str | None]]:
    found = [
        entry
        for entry in walk(cli._parser(), "eldergate")
        if entry[0] != "eldergate simulate"  # a placeholder: `simulate` parses its own arguments
    ]
    found += list(walk(simulate_cli._parser(), "eldergate simulate"))
    return found


def test_the_tree_is_walked() -> None:
    paths = {path for path, _, _ in commands()}
    assert {"eldergate", "eldergate faces enroll", "eldergate cards hash"} <= paths
    assert "eldergate simulate press" in paths and len(paths) > 25


@pytest.mark.parametrize(
    ("path", "parser", "summary"), commands(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_each_command_has_a_summary_and_an_example(
    path: str, parser: argparse.ArgumentParser, summary: str | None
) -> None:
    if path.count(" ") > 0 and path != "eldergate simulate":
        assert summary, f"{path}: no one-line summary in its parent's list"
    assert parser.description and "\n" not in parser.description.strip(), path
    epilog = parser.epilog or ""
    assert epilog.startswith("example"), f"{path}: no example"
    shown = [line.strip() for line in epilog.splitlines()[1:]]
    assert shown and all(
        line.split()[0] in ("eldergate", "sudo", "read-card-number") for line in shown
    )
    assert any(path.split()[-1] in line for line in shown), f"{path}: the example is not of it"
    text = parser.format_help()
    assert "example" in text


def test_help_runs_for_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    for path, _, _ in commands():
        argv = path.split()[1:]
        with pytest.raises(SystemExit) as done:
            cli.main([*argv, "--help"])
        assert done.value.code == 0, path
        assert "example" in capsys.readouterr().out, path
