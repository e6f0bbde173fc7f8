"""The README's examples for the HTTP gateway and the command line, run as written.

The shell blocks of the "HTTP gateway" and "Command line" sections run in order, as one bash
session (`set -euo pipefail`), against a real server started the way the README says
(`framepipe serve --http-port 9001`), but on free ports: the examples' `127.0.0.1:9001` is
rewritten to the gateway's address and `STREAM_MANAGER_PORT` points the CLI at the manager.
curl runs with `--fail-with-body` (from a curlrc), so an HTTP error fails the session.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.integration.gateway_harness import running_gateway

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SERVE = "framepipe serve --http-port 9001"


def section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)


def test_readme_gateway_and_cli_examples_run(tmp_path: Path) -> None:
    readme = README.read_text()
    gateway_section = section(readme, "HTTP gateway")
    cli_section = section(readme, "Command line")
    assert f"`{SERVE}` running" in gateway_section
    blocks = shell_blocks(gateway_section) + shell_blocks(cli_section)
    assert len(blocks) == 2, "one example block per section"
    (tmp_path / ".curlrc").write_text("fail-with-body\n")
    with running_gateway() as gateway:
        script = "set -euo pipefail\n" + "\n".join(blocks)
        script = script.replace("http://127.0.0.1:9001", gateway.url)
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("FRAMEPIPE_", "STREAM_MANAGER_"))
        }
        env.update(
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            STREAM_MANAGER_PORT=str(gateway.manager.port),
            CURL_HOME=str(tmp_path),
            TMPDIR=str(tmp_path),
            COLUMNS="200",
        )
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        shown = f"stdout:\n{result.stdout[-6000:]}\nstderr:\n{result.stderr[-3000:]}"
        assert result.returncode == 0, shown
        out = result.stdout
        assert out.startswith("ready\n"), shown
        assert out.count("event: result") == 3 and '"reason":"limit"' in out, shown
        assert '"image"' not in out.split("event: end")[0], shown  # excluded_fields=image
        assert (tmp_path / "framepipe-clip.mp4").exists()
        assert "drops by reason" in out and "recent events" in out, shown
        assert re.search(r"terminated [0-9a-f-]{36}", out), shown
        errors = result.stderr.strip().splitlines()
        assert errors[-1].startswith("framepipe: not_found:") and "hint:" in errors[-1], shown
        assert "Traceback" not in result.stderr, shown
