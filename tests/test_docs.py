"""Every code block of the README and of docs/ runs as written; a block marked as needing the Hub, a GPU, the network,
a server or the whole suite is checked instead for its syntax and for the commands, options, scripts, extras and
imports it names, so that a renamed option or module breaks the page's test, not a reader's first try."""

import ast
import importlib
import importlib.util
import re
import shlex
import subprocess
import tomllib

import pytest
import typer.main
from docs_blocks import (
    DOC_PAGES,
    README,
    REPO_ROOT,
    all_blocks,
    continues_quick_start,
    page_blocks,
    quick_start_blocks,
    reader_directory,
    run_python,
    run_shell,
)

from llava_codebook.cli import app

MARKED = [block for block in all_blocks() if block.needs]
PAGES_THAT_RUN = [page for page in DOC_PAGES if page != README and any(not block.needs for block in page_blocks(page))]
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def test_every_block_is_a_shell_or_python_block_that_runs_or_says_what_it_needs():
    blocks = all_blocks()  # an unknown or unreadable mark raises here
    assert len(DOC_PAGES) > 5 and len(blocks) > 10
    for block in blocks:
        assert block.lang in ("bash", "python"), (
            f"{block.name}: a {block.lang or 'plain'!r} block is neither run nor checked"
        )


def test_docs_links_between_pages_point_to_files_and_headings_that_exist():
    for page in DOC_PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name} links to {target}, which does not exist"
            if anchor and linked.suffix == ".md":
                anchors = {_anchor(h) for h in re.findall(r"^#+ (.*)$", linked.read_text(), flags=re.MULTILINE)}
                assert anchor in anchors, f"{page.name} links to {target}; {linked.name} has {sorted(anchors)}"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


# ------------------------------------------------------------------------------------------- blocks that run
@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES_THAT_RUN, ids=lambda page: page.name)
def test_a_pages_blocks_run_as_written(page, tmp_path):
    """The page's unmarked blocks in order, in a fresh directory with the environment the two commands make; a page
    that continues the quick start first runs the quick start's shell block, and its Python follows the quick
    start's script (one reader's session)."""
    cwd = reader_directory(tmp_path / "clone")
    prelude = ""
    if continues_quick_start(page):
        shell, python = quick_start_blocks()
        done = run_shell(shell.code, cwd)
        assert done.returncode == 0, done.stderr[-3000:]
        prelude = python.code
    python_session = []
    for block in page_blocks(page):
        if block.needs:
            continue
        if block.lang == "bash":
            done = run_shell(block.code, cwd)
            assert done.returncode == 0, f"{block.name}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
            assert "Error" not in done.stderr, f"{block.name}: {done.stderr[-2000:]}"
        else:
            python_session.append(block.code)
    if python_session:
        done = run_python(prelude + "\n".join(python_session), cwd)
        assert done.returncode == 0, f"{page.name}:\n{done.stderr[-3000:]}"


# ------------------------------------------------------------------------------------------- blocks that are marked
@pytest.mark.parametrize("block", MARKED, ids=lambda block: block.name)
def test_a_marked_block_is_valid_and_names_what_exists(block):
    if block.lang == "python":
        _check_python(block.code, block.name)
    else:
        syntax = subprocess.run(["bash", "-n"], check=False, input=block.code, capture_output=True, text=True)
        assert syntax.returncode == 0, f"{block.name}: {syntax.stderr}"
        for command in shell_commands(block.code):
            check_command(command, block.name)


def _check_python(code: str, where: str) -> None:
    tree = ast.parse(code, filename=where)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), (
                    f"{where}: {node.module} has no {alias.name}"
                )
        elif isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)


def shell_commands(code: str) -> list[list[str]]:
    """Each simple command of a shell block as its words: continuation lines joined, comments dropped, split at
    `&&`, `||`, `;` and `|`, leading `NAME=value` assignments removed."""
    joined = re.sub(r"\\\n", " ", code)
    commands = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        current: list[str] = []
        for word in [*words, ";"]:
            if word in ("&&", "||", ";", "|"):
                while current and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", current[0]):
                    current.pop(0)
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(word)
    return commands


def check_command(words: list[str], where: str) -> None:
    program, args = words[0], words[1:]
    if program == "llava-codebook":
        _check_cli(args, where)
    elif program == "python":
        _check_python_command(args, where)
    elif program == "bash":
        script = REPO_ROOT / args[0]
        assert script.is_file(), f"{where}: no script {args[0]}"
        for option in (a for a in args[1:] if a.startswith("--")):
            assert option in script.read_text(), f"{where}: {args[0]} has no option {option}"
    elif program == "pip":
        _check_pip(args, where)
    elif program == "lmms-eval":
        _check_lmms_eval(args, where)
    else:
        assert program in ("curl", "source", "cd", "git", "hf"), (
            f"{where}: the docs test does not know the command {program!r}; teach check_command what to check"
        )


def _check_cli(args: list[str], where: str) -> None:
    group = typer.main.get_command(app)
    while args and args[0].startswith("--"):  # global options before the command
        assert args[0] in ("--debug", "--version"), f"{where}: llava-codebook has no global option {args[0]}"
        args = args[1:]
    assert args and args[0] in group.commands, f"{where}: llava-codebook has no command {args[:1]}"
    command = group.commands[args[0]]
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)} | {"--help"}
    for word in args[1:]:
        if word.startswith("--"):
            assert word.split("=")[0] in known, f"{where}: `llava-codebook {args[0]}` has no option {word}"


def _check_python_command(args: list[str], where: str) -> None:
    if args[0] == "-m":
        assert importlib.util.find_spec(args[1]), f"{where}: no module {args[1]}"
    elif args[0] == "-c":
        _check_python(args[1], where)
    else:
        script = REPO_ROOT / args[0]
        assert script.is_file(), f"{where}: no script {args[0]}"
        for option in (a for a in args[1:] if a.startswith("--")):
            assert f'"{option}"' in script.read_text(), f"{where}: {args[0]} has no option {option}"


def _check_pip(args: list[str], where: str) -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    for word in args:
        if word.startswith(".["):
            for extra in word[2:-1].split(","):
                assert extra in extras, f"{where}: pyproject.toml has no extra {extra!r}"
        elif "==" in word:  # a pinned install names the pin the project installs
            pinned = {pin for pins in PYPROJECT["tool"]["llava-codebook"]["no-deps"].values() for pin in pins}
            assert word in pinned, f"{where}: {word} is not the project's pin ({sorted(pinned)})"


def _check_lmms_eval(args: list[str], where: str) -> None:
    import inspect

    from llava_codebook.integrations.lmms_eval_model import PRUNING_ARGS, LlavaCodebook

    entry_points = PYPROJECT["project"]["entry-points"]["lmms_eval.models"]
    model = args[args.index("--model") + 1]
    assert model in entry_points, f"{where}: no lmms-eval model {model!r} is registered ({sorted(entry_points)})"
    accepted = set(inspect.signature(LlavaCodebook.__init__).parameters) | set(PRUNING_ARGS)
    for pair in args[args.index("--model_args") + 1].split(","):
        assert pair.split("=")[0] in accepted, f"{where}: the lmms-eval model takes no argument {pair.split('=')[0]!r}"


def test_the_docs_checks_catch_a_renamed_option_a_missing_module_and_an_unknown_extra():
    """The name checks above are what keep the marked blocks honest: they must fail on what a rename would leave."""
    for words in (
        ["llava-codebook", "convert", "--base-model", "x"],
        ["llava-codebook", "convrt"],
        ["python", "-m", "llava_codebook.no_such_module"],
        ["pip", "install", "-e", ".[no-such-extra]"],
        ["bash", "scripts/no-such-script.sh"],
    ):
        with pytest.raises(AssertionError):
            check_command(words, "probe")
    with pytest.raises((AssertionError, ImportError)):
        _check_python("from llava_codebook import no_such_name\n", "probe")
    assert shell_commands("A=1 llava-codebook inspect x | head -8  # note\nbash s.sh && echo ok\n") == [
        ["llava-codebook", "inspect", "x"], ["head", "-8"], ["bash", "s.sh"], ["echo", "ok"]
    ]  # fmt: skip


def test_the_readme_is_a_front_page_two_commands_then_one_quick_start_then_links():
    text = README.read_text()
    headings = re.findall(r"^## (.*)$", text, flags=re.M)
    assert headings[:2] == ["The two commands", "Quick start"] and headings.count("Quick start") == 1
    first = page_blocks(README)[0]
    assert [line.split("#")[0].strip() for line in first.code.splitlines()] == [
        "bash scripts/demo.sh",
        "bash scripts/test.sh",
    ]
    assert first.line < 40  # on the first screen, after what the project is
    assert "source .venv/bin/activate" in quick_start_blocks()[0].code  # the installed command lives in .venv
    for page in DOC_PAGES[1:]:
        assert f"(docs/{page.name})" in text, f"the README does not link {page.name}"
    for note in ("No GPU was available", "no Hub access", "not met", "this work"):  # development notes live elsewhere
        assert note not in text
    assert len(text.splitlines()) < 150
