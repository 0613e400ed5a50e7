"""The examples in docstrings run as written (a stale example misleads more than none)."""
import doctest
import importlib

import pytest

MODULES = ["scoring.feedback", "detectors.var", "detectors.knn", "detectors.base", "detectors.artefacts", "scoring.windows"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    failed, tried = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failed == 0
