"""The configuration reference is generated from the settings objects, every setting is in it,
each documented environment variable really sets its setting, and the README shows it."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

from framepipe.cli._settings_reference import extract_from, render_markdown, rows
from framepipe.gateway.settings import GatewaySettings
from framepipe.server.settings import ServerSettings
from framepipe.server.settings_doc import SERVER_SETTINGS

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_documented_and_nothing_else() -> None:
    fields = {f.name for f in dataclasses.fields(ServerSettings)}
    assert set(SERVER_SETTINGS) == fields, (
        "framepipe/server/settings_doc.py must describe exactly the fields of ServerSettings"
    )
    names = [row.field for row in rows()]
    assert len(names) == len(fields) + len(dataclasses.fields(GatewaySettings))
    envs = [row.env for row in rows()]
    assert len(set(envs)) == len(envs)


def test_each_documented_variable_sets_its_setting() -> None:
    base_server = ServerSettings.from_env({})
    base_gateway = GatewaySettings.from_env({})
    for row in rows():
        if row.owner == "manager":
            before = getattr(base_server, row.field)
            after = getattr(ServerSettings.from_env({row.env: row.example}), row.field)
        else:
            before = getattr(base_gateway, row.field)
            after = getattr(GatewaySettings.from_env({row.env: row.example}), row.field)
        assert after != before, f"{row.env}={row.example} did not change {row.field}"


def test_help_settings_prints_the_reference() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "framepipe.cli", "serve", "--help-settings"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert printed == render_markdown()
    assert "`STREAM_MANAGER_PORT` | `7070`" in printed
    assert "`FRAMEPIPE_HTTP_PORT` | `unset`" in printed


def test_readme_table_is_the_generated_one() -> None:
    readme = (ROOT / "README.md").read_text()
    assert extract_from(readme) == render_markdown(), (
        "README.md's configuration table is stale: run "
        "`.venv/bin/python scripts/update_settings_reference.py`"
    )
