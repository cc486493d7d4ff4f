"""Start-up configuration: the keys file, and one-line errors from ``stockledger serve``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from api.app import create_app
from api.auth import KeyRing, KeysFileError, Scope
from api.cli import app as cli
from api.settings import Settings


def _settings(keys_file: Path) -> Settings:
    return Settings(database_url="postgresql://nobody@127.0.0.1:1/none", api_keys_file=keys_file)


def test_keys_are_known_by_plain_secret_or_by_digest(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.toml"
    digest = hashlib.sha256(b"hashed-secret-value").hexdigest()
    keys_file.write_text(
        '[[keys]]\nname = "plain"\nsecret = "plain-secret-value"\nscopes = ["read"]\n'
        f'[[keys]]\nname = "hashed"\nsecret_sha256 = "{digest}"\nscopes = ["pos:write"]\n'
        'locations = ["STORE-1"]\n'
    )

    ring = KeyRing.load(admin_key="the-admin-key-0123", keys_file=keys_file)

    plain, hashed = ring.identify("plain-secret-value"), ring.identify("hashed-secret-value")
    admin = ring.identify("the-admin-key-0123")
    assert plain is not None and plain.scopes == {Scope.READ} and plain.locations is None
    assert hashed is not None and hashed.locations == {"STORE-1"}
    assert admin is not None and admin.holds(Scope.POS_WRITE)
    assert ring.identify("plain-secret-valu") is None


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[[keys]\n", "not valid TOML"),
        ('[[keys]]\nname = "a"\nscopes = ["read"]\n', "exactly one of secret and secret_sha256"),
        ('[[keys]]\nname = "a"\nsecret = "s"\nscopes = ["root"]\n', "keys[0].scopes[0]"),
        ('[[keys]]\nname = "a"\nsecret_sha256 = "abc"\nscopes = ["read"]\n', "64 hexadecimal"),
        ('[[keys]]\nname = "a"\nsecret = "s"\nscopes = ["read"]\nextra = 1\n', "keys[0].extra"),
        (
            '[[keys]]\nname = "a"\nsecret = "s1"\nscopes = ["read"]\n'
            '[[keys]]\nname = "a"\nsecret = "s2"\nscopes = ["read"]\n',
            "duplicate key names: a",
        ),
        (
            '[[keys]]\nname = "a"\nsecret = "same"\nscopes = ["read"]\n'
            '[[keys]]\nname = "b"\nsecret = "same"\nscopes = ["read"]\n',
            "share the same secret",
        ),
    ],
)
def test_a_bad_keys_file_stops_start_up_with_one_line(
    tmp_path: Path, content: str, expected: str
) -> None:
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(content)

    with pytest.raises(KeysFileError) as refused:
        create_app(_settings(keys_file))

    message = str(refused.value)
    assert expected in message
    assert "\n" not in message


def test_a_secret_in_a_bad_keys_file_is_never_repeated(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text('[[keys]]\nname = "a"\nsecret = 12345678901234\nscopes = ["read"]\n')

    with pytest.raises(KeysFileError) as refused:
        create_app(_settings(keys_file))

    assert "12345678901234" not in str(refused.value)


def test_serve_with_an_unusable_data_folder_fails_with_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.delenv("STOCKLEDGER_DATABASE_URL", raising=False)
    monkeypatch.setenv("STOCKLEDGER_DATA_DIR", str(not_a_folder / "data"))

    result = CliRunner().invoke(cli, ["serve"])

    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: cannot start the embedded servers:")


def test_serve_with_a_missing_keys_file_fails_with_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STOCKLEDGER_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("STOCKLEDGER_API_KEYS_FILE", str(tmp_path / "missing.toml"))

    result = CliRunner().invoke(cli, ["serve"])

    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: API keys file {tmp_path / 'missing.toml'} does not exist"
    ]


def test_serve_refuses_api_only_with_workers_only() -> None:
    result = CliRunner().invoke(cli, ["serve", "--api-only", "--workers-only"])

    assert result.exit_code == 1
    assert "exclude each other" in result.output


@pytest.mark.parametrize("wanted", [False, True])
def test_fastapi_opentelemetry_is_on_only_when_asked_for(
    wanted: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STOCKLEDGER_OPENTELEMETRY", str(wanted).lower())
    settings = Settings(database_url="postgresql://nobody@127.0.0.1:1/none")

    telemetry = create_app(settings)._telemetry

    assert (telemetry["tracing"], telemetry["metrics"], telemetry["logs"]) == (wanted,) * 3


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STOCKLEDGER_BATCH_LINGER_SECONDS", "soon"),
        ("STOCKLEDGER_BATCH_LINGER_SECONDS", "5"),
        ("STOCKLEDGER_AGGREGATE_CACHE_SIZE", "0"),
        ("STOCKLEDGER_SNAPSHOT_INTERVAL", "-1"),
        ("STOCKLEDGER_RESERVATION_TTL", "a while"),
    ],
)
def test_serve_with_a_bad_ledger_setting_fails_with_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv("STOCKLEDGER_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setenv(variable, value)

    result = CliRunner().invoke(cli, ["serve"])

    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {variable}: ")
