"""The configuration reference, generated from the settings objects.

``framepipe serve --help-settings`` prints it; the README's table is this output
(``scripts/update_settings_reference.py`` rewrites it, a test checks they match).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from framepipe.gateway.settings import GatewaySettings
from framepipe.server.settings import ServerSettings
from framepipe.server.settings_doc import SERVER_SETTINGS

BEGIN_MARKER = "<!-- settings-reference:begin (generated: framepipe serve --help-settings) -->"
END_MARKER = "<!-- settings-reference:end -->"


@dataclass(frozen=True)
class SettingRow:
    owner: str  # "manager" or "gateway"
    field: str
    env: str
    default: str
    description: str
    example: str
    section: str = ""  # what the table prefixes the description with ("HTTP gateway")


def _shown(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) if value else "empty"
    return str(value)


def rows() -> list[SettingRow]:
    """Every setting of the manager and of the HTTP gateway, in declaration order."""
    found: list[SettingRow] = []
    for spec in dataclasses.fields(ServerSettings):
        doc = SERVER_SETTINGS.get(spec.name)
        if doc is None:
            raise LookupError(
                f"setting {spec.name!r} of ServerSettings has no entry in "
                "framepipe/server/settings_doc.py (add its env name and description)"
            )
        default = doc.shown_default if doc.shown_default is not None else _shown(spec.default)
        found.append(
            SettingRow("manager", spec.name, doc.env, default, doc.description, doc.example)
        )
    for spec in dataclasses.fields(GatewaySettings):
        meta = spec.metadata
        found.append(
            SettingRow(
                "gateway",
                spec.name,
                meta["env"],
                _shown(spec.default),
                meta["help"],
                meta["example"],
                meta.get("section", "HTTP gateway"),
            )
        )
    return found


def render_markdown() -> str:
    """The reference as a Markdown table (readable as plain text too)."""
    lines = [
        "| Environment variable | Default | What it sets |",
        "|---|---|---|",
    ]
    for row in rows():
        where = f"{row.section}: " if row.section else ""
        lines.append(f"| `{row.env}` | `{row.default}` | {where}{row.description} |")
    return "\n".join(lines) + "\n"


def replace_in(text: str, table: str) -> str:
    """``text`` with the block between the markers replaced by ``table``."""
    start = text.index(BEGIN_MARKER) + len(BEGIN_MARKER)
    end = text.index(END_MARKER)
    return text[:start] + "\n" + table + text[end:]


def extract_from(text: str) -> str:
    """The table between the markers in ``text``."""
    start = text.index(BEGIN_MARKER) + len(BEGIN_MARKER)
    end = text.index(END_MARKER)
    return text[start:end].lstrip("\n")
