"""config/*.env name only real settings, and local.env matches the built-in defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from exporter.config import Settings

CONFIG = Path(__file__).parent.parent / "config"
LINE = re.compile(r"^(?:# SECRET )?(EXPORTER_[A-Z0-9_]+)=(.*)$")


def variables(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        match = LINE.match(line.strip())
        if match:
            found[match.group(1)] = match.group(2)
    return found


def is_setting(name: str) -> bool:
    model: type[BaseModel] = Settings
    parts = name.removeprefix("EXPORTER_").lower().split("__")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if i < len(parts) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return False
            model = annotation
    return True


@pytest.mark.parametrize("path", sorted(CONFIG.glob("*.env")), ids=lambda p: p.name)
def test_every_variable_is_a_real_setting(path: Path) -> None:
    names = variables(path)
    assert names, f"{path} names no settings"
    assert [n for n in names if not is_setting(n)] == []


def test_local_env_is_exactly_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in variables(CONFIG / "local.env").items():
        monkeypatch.setenv(name, value)
    assert Settings() == Settings.model_construct()
