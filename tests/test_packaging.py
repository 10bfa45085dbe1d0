"""The package builds without setuptools warnings, and its wheel carries the data files the code reads."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO

setuptools = pytest.importorskip("setuptools", minversion="77", reason="the test extra pins setuptools>=77")

# Runs in a fresh interpreter in a copy of the project: the wheel and the editable wheel as pip builds them,
# every warning setuptools emits recorded (pip shows them on each install).
BUILD = """
import json, sys, warnings
from setuptools import build_meta
from setuptools.warnings import SetuptoolsWarning
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    built = [build_meta.build_wheel(sys.argv[1]), build_meta.build_editable(sys.argv[1])]
said = [f"{w.category.__name__}: {w.message}" for w in caught if issubclass(w.category, SetuptoolsWarning)]
print(json.dumps({"built": built, "warnings": said}))
"""
# One file of each data folder the code opens at run time.
DATA_FILES = [
    "models/weights/fusion_local.json",
    "models/reference/fatformer_keys.json",
    "models/trust/C2PA-TRUST-LIST.pem",
    "serve_app/static/index.html",
    "training/data_registry/c2pa.csv.gz",
]


def test_the_wheels_build_without_warnings_and_ship_the_data(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, project / name)
    for package in ("serve_app", "deployments", "training", "models"):
        shutil.copytree(REPO / package, project / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "dist"
    done = subprocess.run(
        [sys.executable, "-c", BUILD, str(out)], cwd=project, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["warnings"] == []
    with zipfile.ZipFile(out / report["built"][0]) as wheel:
        names = set(wheel.namelist())
    assert set(DATA_FILES) <= names
    assert not any("__pycache__" in name or name.startswith(("tests/", "bench/")) for name in names)
