"""Rewrite the configuration table in README.md from the settings objects.

.venv/bin/python scripts/update_settings_reference.py          # rewrite README.md
.venv/bin/python scripts/update_settings_reference.py --check  # exit 1 when it is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from framepipe.cli._settings_reference import extract_from, render_markdown, replace_in  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only check, change nothing")
    args = parser.parse_args()
    readme = ROOT / "README.md"
    text = readme.read_text()
    table = render_markdown()
    if extract_from(text) == table:
        return 0
    if args.check:
        print("README.md's configuration table is stale", file=sys.stderr)
        return 1
    readme.write_text(replace_in(text, table))
    print("README.md: configuration table rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
