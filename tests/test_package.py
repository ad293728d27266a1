"""The package surface: every public module imports, lists its names in ``__all__``, and every
listed name resolves; the layering keeps numerics free of the layers above them."""

import ast
import importlib
import pathlib

import pytest

import jaxnn

LOW = {"registry", "activations", "losses", "regularizers", "initializers", "gradcheck", "preprocessing",
       "optim", "data", "datasets", "batching", "checkpoint", "plots", "distributed"}
HIGH = {"layers", "arch", "models", "config", "train", "rundir", "diagnostics", "tensorboard", "population", "search",
        "ensemble", "experiments", "cli"}


@pytest.mark.parametrize("name", [m for m in jaxnn.SUBMODULES if m != "cli"])
def test_module_public_names_resolve(name):
    module = getattr(jaxnn, name)
    assert module.__all__, name
    for public in module.__all__:
        assert hasattr(module, public), f"jaxnn.{name}.{public}"
    assert module.__doc__


def test_unknown_attribute_is_an_error():
    with pytest.raises(AttributeError):
        jaxnn.no_such_module  # noqa: B018


@pytest.mark.parametrize("name", sorted(LOW))
def test_numerics_do_not_import_upper_layers(name):
    source = pathlib.Path(importlib.util.find_spec(f"jaxnn.{name}").origin).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "jaxnn":
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jaxnn."):
            imported.add(node.module.split(".")[1])
    assert not imported & HIGH, f"jaxnn.{name} imports {imported & HIGH}"


def test_train_does_not_know_the_run_directory():
    """train is a plain loop; the run directory's module sits above it, not the other way."""
    source = pathlib.Path(importlib.util.find_spec("jaxnn.train").origin).read_text()
    names = {a.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Import | ast.ImportFrom)
             for a in n.names} | {n.module for n in ast.walk(ast.parse(source))
                                 if isinstance(n, ast.ImportFrom)}
    assert not names & {"rundir", "tqdm", "checkpoint", "jaxnn.checkpoint", "tqdm.auto"}
    calls = {n.func.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Name)}
    assert "open" not in calls


def test_only_the_cli_prints():
    root = pathlib.Path(jaxnn.__file__).parent
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Name) and n.func.id == "print"]
        assert not calls, f"{path.name} prints"


def test_the_cli_constructs_no_model_optimizer_or_dataset():
    """Every verb goes through jaxnn.config: no module of jaxnn/cli calls a layer, a model
    builder, an optimizer factory or the data loader itself."""
    root = pathlib.Path(jaxnn.__file__).parent / "cli"
    banned = {("models", n) for n in ("mlp", "convnet", "serial")} | {
        ("layers", n) for n in ("mlp", "convnet", "serial", "Dense", "Conv2D", "Residual")} | {
        ("optim", "get"), ("optim", "get_schedule"), ("data", "load"), ("datasets", "load"),
        ("preprocessing", "get")}
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    isinstance(node.func.value, ast.Name):
                call = (node.func.value.id, node.func.attr)
                assert call not in banned, f"{path.name}:{node.lineno} calls {'.'.join(call)}"
