"""jaxnn.arch: one table of --arch kinds generates the parser, the builder and the help."""

import jax
import numpy as np
import pytest

from jaxnn import arch, layers, models
from jaxnn.arch import ArchItem, ArchKind


def test_parse_nested_residual_blocks_and_format_back():
    text = "conv:16,res(conv:16,conv:16:5),pool,res(conv:8,res(conv:8)),pool,fc:64,dropout:0.5"
    items = arch.parse_arch(text)
    assert items[1] == ArchItem("res", body=(ArchItem("conv", 16, 3), ArchItem("conv", 16, 5)))
    assert items[3].body[1] == ArchItem("res", body=(ArchItem("conv", 8, 3),))
    assert arch.format_arch(items) == text
    assert arch.parse_arch(arch.format_arch(items)) == items


@pytest.mark.parametrize("text, words", [
    ("conv:4,nope", "unknown kind 'nope'; valid: " + ", ".join(arch.KINDS)),
    ("conv:0", "conv:C[:K]"),
    ("fc:4:4", "fc:N: takes 1 argument(s), got 2"),
    ("pool:2", "pool: takes 0 argument(s)"),
    ("dropout:1.5", "drop probability"),
    ("res()", "at least one entry"),
    ("res(conv:4", "unbalanced '('"),
    ("conv:4)", "unbalanced ')'"),
    ("fc(fc:4)", "only res(...) holds entries"),
])
def test_a_bad_entry_is_named_with_the_grammar(text, words):
    with pytest.raises(ValueError) as e:
        arch.parse_arch(text)
    assert words in str(e.value) and arch.ARCH_GRAMMAR in str(e.value)


def test_the_grammar_help_and_readme_table_come_from_the_table():
    for kind in arch.KINDS.values():
        assert kind.syntax in arch.ARCH_GRAMMAR
        assert f"{kind.syntax}: {kind.help}" in arch.ARCH_HELP
        assert f"| `{kind.syntax}` | {kind.help} |" in arch.kinds_table()


def test_cli_help_lists_every_kind(capsys):
    from jaxnn.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for kind in arch.KINDS.values():
        assert kind.syntax in out


def test_needs_images_looks_inside_residual_blocks():
    assert arch.needs_images(arch.parse_arch("res(conv:4)"))
    assert not arch.needs_images(arch.parse_arch("fc:4,res(fc:4),dropout:0.1"))


def test_an_entry_that_needs_images_on_flat_features_is_refused():
    with pytest.raises(ValueError, match="conv:4 needs images .*on flat features"):
        models.convnet((16,), 3, "fc:8,conv:4")
    with pytest.raises(ValueError, match="cannot turn images into flat features"):
        models.convnet((8, 8, 1), 3, "res(conv:4,fc:8)")


def test_a_kind_added_as_one_row_parses_builds_and_trains(monkeypatch):
    """Adding a layer kind is its row: here ``ln`` (a LayerNorm) becomes usable in --arch."""
    row = ArchKind("ln", "ln", "layer normalization",
                   lambda args: ArchItem("ln"), lambda item, opts, image: ([layers.LayerNorm()],
                                                                           image),
                   False, lambda item: "ln")
    monkeypatch.setitem(arch.KINDS, "ln", row)
    model = models.convnet((5,), 3, "fc:4,ln")
    params, state = model.init(jax.random.key(0))
    x = np.random.default_rng(0).normal(size=(2, 5)).astype(np.float32)
    y, _ = model.apply(params, state, x)
    # fc:4 -> relu -> LayerNorm (gamma 1, beta 0) -> Dense(3), against numpy:
    w0, b0 = np.asarray(params["layer_0"]["w"]), np.asarray(params["layer_0"]["b"])
    h = np.maximum(x @ w0 + b0, 0)
    h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5)
    w1, b1 = np.asarray(params["layer_1"]["w"]), np.asarray(params["layer_1"]["b"])
    np.testing.assert_allclose(np.asarray(y), h @ w1 + b1, rtol=1e-4, atol=1e-5)


def test_gap_averages_each_channel_before_the_classifier():
    """conv:3 -> relu -> gap -> Dense, against numpy (the conv written as a loop)."""
    model = models.convnet((4, 4, 2), 3, "conv:3,gap")
    params, state = model.init(jax.random.key(0))
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 2)).astype(np.float32)
    y, _ = model.apply(params, state, x)
    w, b = np.asarray(params["layer_0"]["w"]), np.asarray(params["layer_0"]["b"])
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    conv = np.zeros((2, 4, 4, 3), np.float32)
    for i in range(4):
        for j in range(4):
            conv[:, i, j] = np.einsum("nuvc,uvco->no", xp[:, i:i + 3, j:j + 3], w) + b
    h = np.maximum(conv, 0).mean(axis=(1, 2))
    w1, b1 = np.asarray(params["layer_1"]["w"]), np.asarray(params["layer_1"]["b"])
    np.testing.assert_allclose(np.asarray(y), h @ w1 + b1, rtol=1e-4, atol=1e-5)
    assert arch.format_arch(arch.parse_arch("conv:3,gap,fc:4")) == "conv:3,gap,fc:4"
    with pytest.raises(ValueError, match="gap needs images"):
        models.convnet((6,), 3, "gap")
