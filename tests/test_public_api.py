"""Each package's `__all__` is what it really exports, imported explicitly and by its owner."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

PACKAGES = (
    "cxrlab",
    "cxrlab.api",
    "cxrlab.results",
    "cxrlab.data",
    "cxrlab.models",
    "cxrlab.train",
    "cxrlab.evaluate",
    "cxrlab.analysis",
    "cxrlab.explain",
    "cxrlab.report",
    "cxrlab.synth",
)


@pytest.mark.parametrize("name", PACKAGES)
def test_every_name_in_all_resolves(name):
    package = importlib.import_module(name)
    exported = package.__all__
    assert len(set(exported)) == len(exported), f"{name}.__all__ repeats a name"
    missing = [n for n in exported if getattr(package, n, None) is None]
    assert not missing, f"{name}.__all__ names {missing}, which do not resolve"


@pytest.mark.parametrize("name", PACKAGES)
def test_exports_are_defined_in_the_package_itself(name):
    """One owner per concept: a package does not re-export another package's functions."""
    package = importlib.import_module(name)
    owners = {
        n: getattr(package, n).__module__
        for n in package.__all__
        if hasattr(getattr(package, n), "__module__") and callable(getattr(package, n))
    }
    foreign = {n: m for n, m in owners.items() if m != name and not m.startswith(name + ".")}
    assert not foreign, f"{name} re-exports {foreign}"


@pytest.mark.parametrize("name", PACKAGES)
def test_no_lazy_module_getattr(name):
    """Imports are explicit lines a reader (and a linter) can follow, not a lookup table."""
    assert "__getattr__" not in vars(importlib.import_module(name))


def test_train_no_longer_offers_names_it_does_not_own():
    train = importlib.import_module("cxrlab.train")  # the package; `cxrlab.train` is the API's

    for gone in ("load_run_data", "load_model_from_checkpoint"):
        assert not hasattr(train, gone)
        assert gone not in train.__all__


def test_cli_import_loads_no_torch():
    """`cxrlab --help` stays fast: command modules import their stage inside the command."""
    code = (
        "import sys, cxrlab.cli; "
        "print(sorted(m for m in ('torch', 'lightning', 'timm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
