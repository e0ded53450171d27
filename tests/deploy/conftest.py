"""Fixtures for the deployment tests: the chart rendered by a real helm binary.

`make deploy-tools` puts one in .cache/tools/helm (or set $HELM); without it, the chart
tests are skipped with that reason.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from .manifests import CHART, PRODUCTION_VALUES, HelmError, Manifest, find_helm


def _helm_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("CACHE", "CONFIG", "DATA"):
        env[f"HELM_{name}_HOME"] = str(tmp / name.lower())
    return env


@pytest.fixture(name="helm_template", scope="session")
def _fix_helm_template(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., list[Manifest]]:
    """helm template the chart with value files and --set pairs; return the documents."""
    helm = find_helm()
    if helm is None:
        pytest.skip(
            "no helm binary: run `make deploy-tools` (installs .cache/tools/helm) or set $HELM"
        )
    env = _helm_env(tmp_path_factory.mktemp("helm"))

    def render(*values_files: Path, sets: tuple[str, ...] = ()) -> list[Manifest]:
        cmd = [str(helm), "template", "exporter", str(CHART), "--namespace", "exporter"]
        for values in values_files:
            cmd += ["-f", str(values)]
        for pair in sets:
            cmd += ["--set", pair]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=60)
        if proc.returncode != 0:
            raise HelmError(proc.stderr)
        return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]

    return render


@pytest.fixture(name="rendered", scope="session", params=["default", "production"])
def _fix_rendered(
    request: pytest.FixtureRequest, helm_template: Callable[..., list[Manifest]]
) -> list[Manifest]:
    """The chart rendered with the default values, then with the production-like ones."""
    if request.param == "production":
        return helm_template(PRODUCTION_VALUES)
    return helm_template()


@pytest.fixture(name="production", scope="session")
def _fix_production(helm_template: Callable[..., list[Manifest]]) -> list[Manifest]:
    return helm_template(PRODUCTION_VALUES)
