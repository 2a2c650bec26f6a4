"""The code stays lint-clean: ruff with the configuration in pyproject.toml (ruff is in the test extra)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    assert importlib.util.find_spec("ruff"), "ruff is missing: pip install -e '.[test]'"
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "migrate", "tests", "scripts"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr



def test_tests_and_scripts_import_only_modules_of_this_checkout():
    """The venv's editable install can resolve a module that no longer exists here (an old layout) to
    another checkout: a test would then patch or test code that is not this code, and pass."""
    pattern = re.compile(r"^\s*(?:from (migrate(?:\.\w+)*) import ([\w, ]+)|import (migrate(?:\.\w+)+))", re.M)
    elsewhere = []
    for path in [*ROOT.glob("tests/*.py"), *ROOT.glob("scripts/*.py")]:
        for package, names, module in pattern.findall(path.read_text()):
            imported = [n.split(" as ")[0].strip() for n in names.split(",")]
            for name in [module] if module else [package, *(f"{package}.{n}" for n in imported)]:
                try:
                    spec = importlib.util.find_spec(name)
                except ModuleNotFoundError:
                    spec = None
                if spec and spec.origin and not Path(spec.origin).resolve().is_relative_to(ROOT):
                    elsewhere.append(f"{path.name}: {name} is {spec.origin}")
    assert not elsewhere, elsewhere
