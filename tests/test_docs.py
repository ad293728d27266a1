"""The docs work when pasted: the README's ```python blocks run as written, in order, in one fresh
interpreter, each printing something; every relative link in the repository's markdown resolves."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The only kind of block allowed not to run starts with this line.
NOT_RUN = "# not run: needs several processes"
_FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)>\s]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def python_blocks(text: str) -> list[str]:
    return [m.group(1) for m in _FENCE.finditer(text)]


def markdown_files() -> list[Path]:
    """The repository's markdown files (tracked or new), not those of tools and environments."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                          "*.md"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode == 0 and out.stdout.strip():
        return [ROOT / p for p in out.stdout.split() if (ROOT / p).is_file()]
    skip = {".venv", ".git", ".pytest_cache", "node_modules", "runs"}
    return [p for p in ROOT.rglob("*.md") if not skip & set(p.relative_to(ROOT).parts)]


def relative_links(text: str) -> list[str]:
    """Link targets that point into the repository (no URL scheme, no pure #anchor), without
    their #anchor; links inside code blocks and inline code are not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def test_the_link_checker_finds_links():
    text = "see [a](docs/a.md#x), ![img](p.png), [web](https://x.org), [top](#y), `[no](z.md)`"
    assert relative_links(text) == ["docs/a.md", "p.png"]


def test_every_relative_link_resolves():
    files = markdown_files()
    assert ROOT / "README.md" in files
    broken = []
    for md in files:
        for target in relative_links(md.read_text(encoding="utf-8")):
            if not (md.parent / target).exists():
                broken.append(f"{md.relative_to(ROOT)}: {target}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_and_contributing_do_not_point_outside_the_repository():
    for name in ("README.md", "CONTRIBUTING.md"):
        text = (ROOT / name).read_text(encoding="utf-8")
        assert "../shared" not in text and "SPEC.md" not in text and "STYLE.md" not in text, name


def test_only_blocks_that_need_a_cluster_are_skipped():
    blocks = python_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert blocks
    for b in blocks:
        first = b.strip().splitlines()[0] if b.strip() else ""
        if "initialize(" in b or "--coordinator" in b:
            assert first == NOT_RUN, f"a multi-process block must start with {NOT_RUN!r}"


@pytest.mark.slow
def test_readme_python_blocks_run_in_order_and_print(tmp_path):
    blocks = python_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    run = [b for b in blocks if not b.lstrip().startswith(NOT_RUN)]
    assert run
    marker = "@@readme-block-{}@@"
    script = "".join(f"print({marker.format(i)!r}, flush=True)\n{b}\n" for i, b in enumerate(run))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    parts = re.split(r"@@readme-block-(\d+)@@\n", proc.stdout)[1:]
    printed = {int(i): out for i, out in zip(parts[::2], parts[1::2], strict=True)}
    assert sorted(printed) == list(range(len(run)))
    silent = [run[i].strip().splitlines()[0] for i, out in printed.items() if not out.strip()]
    assert not silent, f"README blocks that print nothing: {silent}"


def test_the_readme_lists_every_arch_kind_from_the_table():
    from jaxnn import arch

    assert arch.kinds_table() in (ROOT / "README.md").read_text(encoding="utf-8")
