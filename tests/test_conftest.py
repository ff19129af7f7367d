"""The test infrastructure itself: Hypothesis profiles chosen by environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parents[1]


def test_default_profile_is_the_fast_one():
    if os.environ.get("HYPOTHESIS_PROFILE", "default") != "default":
        pytest.skip("another profile was asked for")
    assert settings.default.max_examples == settings.get_profile("default").max_examples
    assert settings.get_profile("thorough").max_examples >= \
        10 * settings.get_profile("default").max_examples


def test_thorough_profile_is_selected_by_environment():
    code = ("import tests.conftest; from hypothesis import settings; "
            "print(settings.default.max_examples)")
    env = {**os.environ, "HYPOTHESIS_PROFILE": "thorough"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout
    assert int(out) == settings.get_profile("thorough").max_examples
