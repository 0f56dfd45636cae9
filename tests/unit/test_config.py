"""Settings refuse a misspelt part name at once, in a sentence that names the variable."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from voxgate.cli import app
from voxgate.config import Settings


@pytest.mark.parametrize(
    ("field", "allowed"),
    [
        ("stt", "'auto', 'whisper', 'pocketsphinx' or 'openai'"),
        ("tts", "'auto', 'piper', 'espeak' or 'openai'"),
        ("vad", "'auto', 'silero' or 'webrtc'"),
    ],
)
def test_a_cascade_part_must_be_one_the_cascade_has(
    field: str, allowed: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"VOXGATE_{field.upper()}", "bogus")
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None)  # type: ignore[call-arg]
    text = str(info.value)
    assert f"VOXGATE_{field.upper()}" in text and allowed in text


def test_serve_prints_the_bad_variable_instead_of_a_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env file here
    monkeypatch.setenv("VOXGATE_STT", "bogus")
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 2
    assert "VOXGATE_STT" in result.output
    assert "'pocketsphinx' or" in result.output and "'openai' (got 'bogus')" in result.output
    assert "Traceback" not in result.output


def test_default_store_is_in_the_user_data_directory_not_the_working_directory(
    monkeypatch, tmp_path
) -> None:
    from voxgate.config import Settings

    monkeypatch.delenv("VOXGATE_DATABASE_URL", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    url = Settings(_env_file=None).database_url  # type: ignore[call-arg]
    assert url == f"sqlite+aiosqlite:///{tmp_path / 'data' / 'voxgate' / 'voxgate.db'}"
