"""The Dockerfile builds the image production expects (hadolint checks style in make lint)."""

from __future__ import annotations

import json
import re

import pytest

from .manifests import ROOT


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    result = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


@pytest.fixture(name="final_stage")
def _fix_final_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    last_from = max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM")
    return instructions[last_from:]


def test_base_image_is_pinned_to_a_patch_release() -> None:
    args = dict(rest.split("=", 1) for kw, rest in _instructions() if kw == "ARG" and "=" in rest)
    assert re.fullmatch(
        r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", args["PYTHON_IMAGE"]
    )
    froms = [rest for kw, rest in _instructions() if kw == "FROM"]
    assert len(froms) >= 2, "multi-stage: build in one stage, run in another"
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms)


def test_runtime_runs_as_numeric_non_root_user(final_stage: list[tuple[str, str]]) -> None:
    users = [rest for kw, rest in final_stage if kw == "USER"]
    assert users, "the runtime stage must set USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "numeric, so runAsNonRoot can verify it"
    assert int(uid) > 0


def test_runtime_has_a_healthcheck_on_healthz(final_stage: list[tuple[str, str]]) -> None:
    (healthcheck,) = [rest for kw, rest in final_stage if kw == "HEALTHCHECK"]
    assert "/healthz" in healthcheck
    assert "curl" not in healthcheck, "slim has no curl"
    assert "wget" not in healthcheck, "slim has no wget"


def test_runtime_copies_only_the_venv(final_stage: list[tuple[str, str]]) -> None:
    copies = [rest for kw, rest in final_stage if kw in ("COPY", "ADD")]
    assert copies == ["--from=builder /opt/venv /opt/venv"]
    runs = " ".join(rest for kw, rest in final_stage if kw == "RUN")
    assert "apt-get" not in runs
    assert "pip " not in runs


def test_one_image_selects_its_process_by_command(final_stage: list[tuple[str, str]]) -> None:
    entrypoint = [json.loads(rest) for kw, rest in final_stage if kw == "ENTRYPOINT"]
    cmd = [json.loads(rest) for kw, rest in final_stage if kw == "CMD"]
    assert entrypoint == [["exporter"]]
    assert cmd == [["api"]]
    env = " ".join(rest for kw, rest in final_stage if kw == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env
    assert "EXPORTER_API__HOST=0.0.0.0" in env


def test_build_context_is_an_allow_list() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    assert "!src/" in lines
    assert "!setup.cfg" in lines
