"""README's production guide ("For a real domain") stays true: every `kartero` command in it is one the
CLI accepts (the command path, its options and its number of arguments), its `[acme]` snippet is a
config `kartero init`'s file accepts, and every test and document it names exists. What each step does
is exercised by the test the step names."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from kartero import config as config_module
from kartero.cli import main

ROOT = Path(__file__).resolve().parents[2]


def guide() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("### For a real domain")
    return text[start : text.index("\n## ", start)]


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", guide(), flags=re.S)


def kartero_commands() -> list[list[str]]:
    """Each `kartero ...` invocation of the shell blocks, `$K` expanded, as its argument list."""
    commands = []
    k_value: list[str] = []
    for block in blocks("sh"):
        for raw in block.replace("\\\n", " ").splitlines():
            line = raw.split("  #", 1)[0].strip()
            if line.startswith("K="):
                k_value = shlex.split(shlex.split(line[2:])[0])
                continue
            for part in line.split("|"):
                words = shlex.split(part.replace("$(date +%F)", "2026-11-30"))
                words = [w for word in words for w in (k_value if word == "$K" else [word])]
                names = [i for i, word in enumerate(words) if word.endswith("bin/kartero")]
                if names:
                    commands.append(words[names[0] + 1 :])
    return commands


def test_the_guide_runs_the_commands_of_every_step() -> None:
    seen = {" ".join(a for a in args if not a.startswith(("-", "/"))).split(" ")[0] for args in kartero_commands()}
    assert {"init", "cert", "dkim", "dns", "user", "import", "backup", "restore"} <= seen


@pytest.mark.parametrize("args", kartero_commands(), ids=lambda args: " ".join(args)[:60])
def test_every_guide_command_is_one_the_cli_accepts(args: list[str]) -> None:
    command: click.Command = main
    ctx: click.Context | None = None
    rest = args
    while True:
        try:
            ctx = command.make_context(command.name or "kartero", list(rest), parent=ctx)
        except click.BadParameter as exc:  # the guide's paths are the server's, not this machine's
            assert "does not exist" in exc.format_message(), exc.format_message()
            return
        if not isinstance(command, click.Group):
            return
        name, sub, rest = command.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        assert sub is not None, name
        command = sub


def test_the_guide_acme_snippet_is_a_config_init_accepts(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["init", str(tmp_path / "etc"), "--domain", "example.org"])
    assert result.exit_code == 0, result.output
    path = tmp_path / "etc" / "kartero.toml"
    (acme,) = [block for block in blocks("toml") if "[acme]" in block]
    path.write_text(path.read_text() + "\n" + acme)
    config = config_module.load(path)
    assert config.acme is not None
    assert config.acme.names == ("mail.example.org", "mta-sts.example.org", "autoconfig.example.org")
    assert config.hostname == "mail.example.org"
    assert {"http", "https", "smtp", "submissions", "imaps"} <= config.listen.keys()


def test_every_test_and_document_the_guide_names_exists() -> None:
    named = set(re.findall(r"(?:tests|docs)/[\w/]+\.(?:py|md)", guide()))
    assert len(named) >= 10
    assert [name for name in sorted(named) if not (ROOT / name).is_file()] == []
