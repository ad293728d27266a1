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


def run_blocks(blocks: list[str], cwd) -> dict[int, str]:
    """Run ``blocks`` in order in one fresh interpreter; what each printed, by index."""
    marker = "@@doc-block-{}@@"
    script = "".join(f"print({marker.format(i)!r}, flush=True)\n{b}\n" for i, b in enumerate(blocks))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    parts = re.split(r"@@doc-block-(\d+)@@\n", proc.stdout)[1:]
    return {int(i): out for i, out in zip(parts[::2], parts[1::2], strict=True)}


@pytest.mark.slow
def test_docs_python_blocks_run_and_the_script_learns(tmp_path):
    """docs/python.md ("Train a model from Python": a hand-written jitted step over the digits)
    and the blocks of docs/api.md run as written, each printing something; the script asserts
    its test accuracy is above chance itself, and we read the number back (>= 0.8: it reaches
    about 0.97 in 5 epochs; chance is 0.1)."""
    python_md = python_blocks((ROOT / "docs" / "python.md").read_text(encoding="utf-8"))
    api_md = python_blocks(API_MD.read_text(encoding="utf-8"))
    assert len(python_md) >= 2 and len(api_md) >= 2
    blocks = python_md + api_md
    printed = run_blocks(blocks, tmp_path)
    assert sorted(printed) == list(range(len(blocks)))
    silent = [blocks[i].strip().splitlines()[0] for i, out in printed.items() if not out.strip()]
    assert not silent, f"doc blocks that print nothing: {silent}"
    accuracy = re.search(r"^test accuracy (\S+)$", printed[0], re.M)
    assert accuracy and float(accuracy.group(1)) >= 0.8, printed[0]
    text = (ROOT / "docs" / "python.md").read_text(encoding="utf-8")
    for needed in ("data.load(\"digits\")", "input_shape=", "losses.", "optax.", "@jax.jit",
                   "jax.value_and_grad"):
        assert needed in python_md[0], needed
    assert "[python.md](python.md)" in API_MD.read_text(encoding="utf-8")
    assert "docs/python.md" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.startswith("# ")


def test_the_readme_lists_every_arch_kind_from_the_table():
    from jaxnn import arch

    assert arch.kinds_table() in (ROOT / "README.md").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# docs/api.md: every public name, and the exact signatures of layers, combinators, registries

API_MD = ROOT / "docs" / "api.md"
#: The generated module reference sits between these two lines of docs/api.md; rewrite it with
#: ``python tests/test_docs.py --write-reference`` after changing a public name or signature.
REF_BEGIN = "<!-- module reference: begin (python tests/test_docs.py --write-reference) -->"
REF_END = "<!-- module reference: end -->"


def public_modules() -> list[str]:
    import jaxnn

    return [m for m in jaxnn.SUBMODULES if m != "cli"]


def _default(v) -> str:
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, type) or (callable(v) and hasattr(v, "__name__")):
        return v.__name__
    return repr(v)


def render_signature(name: str, obj) -> str:
    """``name(params)`` as docs/api.md writes it: no annotations, strings in double quotes,
    classes and functions by name, the ``*`` and ``/`` markers kept."""
    import inspect

    out, star, positional_only = [], False, False
    for p in inspect.signature(obj).parameters.values():
        if p.kind is p.POSITIONAL_ONLY:
            positional_only = True
        elif positional_only:
            out.append("/")
            positional_only = False
        if p.kind is p.VAR_POSITIONAL:
            out.append(f"*{p.name}")
            star = True
        elif p.kind is p.VAR_KEYWORD:
            out.append(f"**{p.name}")
        else:
            if p.kind is p.KEYWORD_ONLY and not star:
                out.append("*")
                star = True
            out.append(p.name if p.default is p.empty else f"{p.name}={_default(p.default)}")
    if positional_only:
        out.append("/")
    return f"{name}({', '.join(out)})"


def _summary(obj) -> str:
    """The first sentence or two of a docstring, its reST markup as markdown, for a table cell."""
    import inspect

    text = " ".join((inspect.getdoc(obj) or "").split("\n\n")[0].split())
    text = re.sub(r":(?:func|class|data|attr|mod|meth|exc):`~?([^`]+)`", r"`\1`", text)
    text = re.sub(r":math:`([^`]+)`", r"`\1`", text)
    text = text.replace("``", "`").replace("\\ ", "")
    if len(text) > 180:  # cut at a sentence end (outside code) before 180 characters
        ends = [m.end() for m in re.finditer(r"[.;:](?=\s)", text[:180])
                if text[:m.start()].count("`") % 2 == 0]
        spaces = [m.start() for m in re.finditer(r" ", text[:178])
                  if text[:m.start()].count("`") % 2 == 0]
        text = text[:ends[-1]] if ends else text[:spaces[-1]] + " ..."
    return text.replace("|", "\\|")


def _home(module: str, name: str, obj) -> str:
    """The public module that defines ``obj`` (where the reference documents it)."""
    import importlib

    owner = getattr(obj, "__module__", None) if callable(obj) else None
    if owner and owner.startswith("jaxnn."):
        top = owner.split(".")[1].lstrip("_")
        if top in public_modules() and name in importlib.import_module(f"jaxnn.{top}").__all__:
            return top
    for m in [module, *public_modules()]:  # a constant: the module whose source assigns it
        mod = importlib.import_module(f"jaxnn.{m}")
        source = Path(mod.__file__).read_text(encoding="utf-8")
        if name in mod.__all__ and re.search(rf"^{name}\b[^=\n(]*=", source, re.M):
            return m
    return module


def api_reference() -> str:
    """The module reference of docs/api.md: per public module, every name of ``__all__`` with
    its signature (functions, classes and NamedTuples) or value (short constants) and the first
    sentence of its docstring; names re-exported from another module are listed as such."""
    import importlib
    import inspect

    lines = []
    for m in public_modules():
        mod = importlib.import_module(f"jaxnn.{m}")
        rows, elsewhere = [], {}
        for name in mod.__all__:
            obj = getattr(mod, name)
            home = _home(m, name, obj)
            if home != m:
                elsewhere.setdefault(home, []).append(f"`{name}`")
                continue
            if inspect.isclass(obj) and issubclass(obj, BaseException):
                rows.append((f"`{name}`", f"exception ({obj.__mro__[1].__name__}). "
                             + _summary(obj)))
            elif inspect.isclass(obj) or inspect.isfunction(obj) or callable(obj):
                try:
                    sig = render_signature(name, obj)
                except (TypeError, ValueError):
                    sig = name
                rows.append((f"`{sig}`", _summary(obj)))
            else:
                value = repr(obj)
                if isinstance(obj, (set, frozenset)):  # a stable order
                    value = f"{type(obj).__name__}({sorted(obj)})"
                shown = f"`{value}`" if len(value) <= 60 else f"a {type(obj).__name__}"
                rows.append((f"`{name}`", f"constant: {shown}".replace("|", "\\|")))
        lines.append(f"### `jaxnn.{m}`\n")
        if rows:
            lines += ["| name | what |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)]
        for home, names in elsewhere.items():
            lines.append(f"\nAlso here, from `jaxnn.{home}`: {', '.join(names)}.")
        lines.append("")
    return "\n".join(lines)


def _name_in_backticks(name: str, text: str) -> bool:
    """``name`` begins a backtick span (optionally after ``module.`` prefixes)."""
    return re.search(rf"`(?:[A-Za-z_][\w]*\.)*{re.escape(name)}\b", text) is not None


def test_every_public_name_is_in_api_md():
    import importlib

    text = API_MD.read_text(encoding="utf-8")
    missing = [f"jaxnn.{m}.{name}" for m in public_modules()
               for name in importlib.import_module(f"jaxnn.{m}").__all__
               if not _name_in_backticks(name, text)]
    assert not missing, ("names of __all__ missing from docs/api.md (run python "
                         "tests/test_docs.py --write-reference):\n" + "\n".join(missing))


def test_layers_combinators_and_registries_are_documented_with_their_signatures():
    """docs/api.md shows each layer, combinator, builder and registry look-up with the
    signature the code has (keyword-only markers included)."""
    from jaxnn import activations, initializers, layers, losses, optim, preprocessing, registry

    text = API_MD.read_text(encoding="utf-8")
    objects = [(n, getattr(layers, n)) for n in (
        "Dense", "Conv2D", "MaxPool", "AvgPool", "Flatten", "GlobalAvgPool", "BatchNorm",
        "LayerNorm", "Dropout", "Activation", "Maxout", "Residual", "serial", "mlp", "convnet")]
    for mod in (activations, losses, initializers, optim, preprocessing):
        objects += [(n, getattr(mod, n)) for n in ("get", "names", "entry", "get_schedule",
                                                     "schedule_names", "for_labels")
                    if hasattr(mod, n)]
    objects += [("Registry", registry.Registry)]
    objects += [(f"Registry.{n}", getattr(registry.Registry, n))
                for n in ("get", "names", "entry", "entries", "register", "alias")]
    missing = []
    for name, obj in objects:
        sig = render_signature(name, obj).replace("(self, ", "(").replace("(self)", "()")
        if f"`{sig}`" not in text:
            missing.append(sig)
    assert not missing, "signatures missing from docs/api.md:\n" + "\n".join(missing)


def test_the_signature_renderer():
    def f(a, b=1, /, c="x", *args, d, e=None, **kw):
        pass

    def g(x, *, k=0.5):
        pass

    assert render_signature("f", f) == 'f(a, b=1, /, c="x", *args, d, e=None, **kw)'
    assert render_signature("g", g) == "g(x, *, k=0.5)"


def test_options_are_keyword_only():
    """api.md: options are keyword-only. Every activation's and loss's parameter with a default
    (after the inputs) and every option of the model builders."""
    import inspect

    from jaxnn import activations, losses, models

    fns = [activations.get(n) for n in activations.names()] + [losses.get(n)
                                                              for n in losses.names()]
    fns += [models.mlp]
    for fn in fns:
        for p in inspect.signature(fn).parameters.values():
            if p.default is not p.empty:
                assert p.kind is p.KEYWORD_ONLY, f"{fn.__name__}: `{p.name}` is not keyword-only"
    with pytest.raises(TypeError):
        activations.leaky_relu(1.0, 0.1)
    with pytest.raises(TypeError):
        models.mlp([4, 3], "tanh")


def _write_reference() -> None:
    text = API_MD.read_text(encoding="utf-8")
    start, end = text.index(REF_BEGIN) + len(REF_BEGIN), text.index(REF_END)
    API_MD.write_text(text[:start] + "\n\n" + api_reference() + "\n" + text[end:],
                      encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-reference"]:
        _write_reference()
    else:
        sys.exit("usage: python tests/test_docs.py --write-reference")
