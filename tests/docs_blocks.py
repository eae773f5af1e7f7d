"""The code blocks of the README and of docs/: finding them, reading their marks, running them as a reader would.

A block runs as written unless the line before it marks what it needs that the tests cannot have:
`<!-- docs-test: needs hub, gpu -->` (needs from `NEEDS`). A page whose blocks continue the README's quick start (its
`model`, `inputs` and `tiny-llava-next-codebook/`) says so once, anywhere on the page:
`<!-- docs-test: after the README quick start -->`.
"""

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
DOC_PAGES = [README, *sorted((REPO_ROOT / "docs").glob("*.md"))]
NEEDS = {
    "hub": "the Hugging Face Hub (real checkpoints, uploads)",
    "gpu": "a GPU (real checkpoints at a usable speed)",
    "network": "the package index",
    "server": "a server that runs until it is stopped",
    "suite": "the whole test suite (it is the suite)",
}
AFTER_QUICK_START = "<!-- docs-test: after the README quick start -->"
_MARK = re.compile(r"^<!-- docs-test: needs ([a-z, ]+) -->$")
_FENCE = re.compile(r"^```(\S*)\s*$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    needs: frozenset[str]  # empty: the block runs as written

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(REPO_ROOT)}:{self.line}"


def page_blocks(page: Path) -> list[Block]:
    """Every fenced block of `page`, in order, with the needs its mark names (an unknown need raises)."""
    lines = page.read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        fence = _FENCE.match(lines[index])
        if not fence:
            index += 1
            continue
        end = next((i for i in range(index + 1, len(lines)) if lines[i].startswith("```")), None)
        if end is None:
            raise AssertionError(f"{page.name}:{index + 1}: a code block is never closed")
        previous = lines[index - 1].strip() if index > 0 else ""
        needs: frozenset[str] = frozenset()
        if previous.startswith("<!-- docs-test:") and previous != AFTER_QUICK_START:
            mark = _MARK.match(previous)
            if not mark:
                raise AssertionError(f"{page.name}:{index}: unreadable mark {previous!r}")
            needs = frozenset(need.strip() for need in mark.group(1).split(","))
            unknown = needs - set(NEEDS)
            if unknown:
                raise AssertionError(f"{page.name}:{index}: unknown needs {sorted(unknown)}; known: {sorted(NEEDS)}")
        code = "\n".join(lines[index + 1 : end]) + "\n"
        blocks.append(Block(page, index + 1, fence.group(1), code, needs))
        index = end + 1
    return blocks


def all_blocks() -> list[Block]:
    return [block for page in DOC_PAGES for block in page_blocks(page)]


def continues_quick_start(page: Path) -> bool:
    return AFTER_QUICK_START in page.read_text()


def quick_start_blocks() -> tuple[Block, Block]:
    """The README quick start: one shell block (activate, write the tiny repo), then one Python script."""
    text = README.read_text()
    start = text.index("\n## Quick start\n")
    end = text.index("\n## ", start + 1)
    first_line = text[:start].count("\n") + 2
    last_line = text[:end].count("\n") + 1
    blocks = [b for b in page_blocks(README) if first_line <= b.line <= last_line]
    langs = [b.lang for b in blocks]
    assert langs == ["bash", "python"], f"the README quick start should be a bash and a python block, found {langs}"
    return blocks[0], blocks[1]


def reader_directory(path: Path) -> Path:
    """A fresh working directory as after `bash scripts/demo.sh` in a clone: `.venv/` is the environment this test
    runs in (`source .venv/bin/activate` puts its `python` and `llava-codebook` first on PATH)."""
    path.mkdir(parents=True, exist_ok=True)
    venv = Path(sys.prefix)
    if (venv / "bin" / "activate").is_file():
        (path / ".venv").symlink_to(venv)
    else:  # not a venv (a system interpreter): an activate script with the same effect
        (path / ".venv" / "bin").mkdir(parents=True)
        (path / ".venv" / "bin" / "activate").write_text(f'export PATH="{Path(sys.executable).parent}:$PATH"\n')
    return path


def reader_env(path: Path) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "PYTHONPATH")}
    # The Hub is never reached; remote code is cached per run, so the repo's own files are what gets loaded.
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(path / ".hf-modules"), GRADIO_ANALYTICS_ENABLED="False")
    return env


def run_shell(code: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """A shell block as a reader runs it: in bash, stopping at the first failing command. Like a reader's shell it
    judges a pipeline by its last command (`inspect | head -8` may end `inspect` by SIGPIPE); the callers check
    stderr for errors."""
    return subprocess.run(
        ["bash", "-e", "-c", code],
        check=False,
        cwd=cwd,
        env=reader_env(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def run_python(code: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """A Python block as a reader runs it: saved as a script and run with the environment's python."""
    script = cwd / f"block-{abs(hash(code))}.py"
    script.write_text(code)
    python = cwd / ".venv" / "bin" / "python"
    return subprocess.run(
        [str(python if python.exists() else sys.executable), script.name],
        check=False,
        cwd=cwd,
        env=reader_env(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,  # nothing may stop to ask (e.g. whether to run a repo's remote code)
    )
