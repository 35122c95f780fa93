"""Adapter options visible to help() and IDEs: a generated "Options" docstring section (default and meaning of
each declared option) and a keyword signature; `python -m tta_bench list methods -v` prints the same lines."""

from __future__ import annotations

import inspect

import pytest

from tta_bench import methods
from tta_bench.methods._doc import HEADING, UNDOCUMENTED, option_lines
from tta_bench.methods.base import Adapter


@pytest.mark.parametrize("name", methods.names())
def test_every_adapter_documents_its_options(name):
    cls = methods.get(name)
    sig = inspect.signature(cls)
    assert list(sig.parameters)[:2] == ["model", "inplace"]
    for key, default in cls.defaults.items():
        assert sig.parameters[key].default == default and sig.parameters[key].kind is inspect.Parameter.KEYWORD_ONLY
    doc = inspect.getdoc(cls) or ""
    if cls.defaults:
        assert HEADING in doc
        for key in cls.defaults:
            assert f"    {key} = {cls.defaults[key]!r}" in doc, key
    else:
        assert "Options: none." in doc


@pytest.mark.parametrize("name", methods.names())
def test_every_method_says_what_each_option_means(name):
    """Zero "(undocumented)" lines: every option of every registered method has a meaning (issue #27)."""
    lines = option_lines(methods.get(name))
    assert not [line for line in lines if line.endswith(UNDOCUMENTED)], name


def test_undocumented_options_are_marked_and_help_shows_them():
    class Toy(Adapter):
        """A toy adapter."""

        option_docs = {"alpha": "mixing weight"}
        defaults = {"alpha": 0.5, "beta": 2, "lr": 0.1}

    lines = option_lines(Toy)
    assert lines[0].split() == ["alpha", "=", "0.5", "mixing", "weight"]
    assert lines[1].endswith(UNDOCUMENTED) and "learning rate" in lines[2]  # common keys documented once
    assert Toy.__doc__.startswith("A toy adapter.") and "beta = 2" in Toy.__doc__
    assert str(inspect.signature(Toy)) == "(model, *, inplace=False, alpha=0.5, beta=2, lr=0.1)"


def test_list_methods_verbose_prints_the_options(capsys):
    from tta_bench.cli import main

    assert main(["list", "methods", "-v"]) == 0
    out = capsys.readouterr().out
    assert "option fisher_alpha = 2000.0" in out and "Fisher anti-forgetting" in out
    assert main(["list", "methods"]) == 0
    assert "option " not in capsys.readouterr().out
