"""The README's shell examples, run as written.

The shell blocks of the "HTTP gateway", "Metrics" and "Command line" sections run in order, as
one bash session (`set -euo pipefail`), against a real server started the way the README says
(`framepipe serve --http-port 9001`), but on free ports: the examples' `127.0.0.1:9001` is
rewritten to the gateway's address and `STREAM_MANAGER_PORT` points the CLI at the manager.
curl runs with `--fail-with-body` (from a curlrc), so an HTTP error fails the session. The
"Running one pipeline" section's block needs no server: it runs on its own, in an empty
directory (its examples say "in any directory").
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.integration.gateway_harness import running_gateway
from tests.integration.manager_harness import running_manager

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SERVE = "framepipe serve --http-port 9001"


def section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)


def session_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment a reader's shell has: the virtual environment active, no framepipe
    settings of this machine's, curl failing on HTTP errors."""
    (tmp_path / ".curlrc").write_text("fail-with-body\n")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("FRAMEPIPE_", "STREAM_MANAGER_"))
    }
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        CURL_HOME=str(tmp_path),
        TMPDIR=str(tmp_path),
        COLUMNS="200",
        **extra,
    )
    return env


def run_session(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_readme_gateway_metrics_and_cli_examples_run(tmp_path: Path) -> None:
    readme = README.read_text()
    sections = [section(readme, title) for title in ("HTTP gateway", "Metrics", "Command line")]
    assert f"`{SERVE}` running" in sections[0]
    blocks = [block for text in sections for block in shell_blocks(text)]
    assert len(blocks) == 3, "one example block per section"
    with running_gateway() as gateway:
        script = "\n".join(blocks).replace("http://127.0.0.1:9001", gateway.url)
        env = session_env(tmp_path, STREAM_MANAGER_PORT=str(gateway.manager.port))
        result = run_session(script, ROOT, env)
        shown = f"stdout:\n{result.stdout[-6000:]}\nstderr:\n{result.stderr[-3000:]}"
        assert result.returncode == 0, shown
        out = result.stdout
        assert out.startswith("ready\n"), shown
        assert out.count("event: result") == 3 and '"reason":"limit"' in out, shown
        assert '"image"' not in out.split("event: end")[0], shown  # excluded_fields=image
        # the metrics: the running pipeline among the manager's totals, its frames, its histogram
        assert 'framepipe_manager_pipelines{state="running"} 1.0\n' in out, shown
        processed = re.search(
            r'^framepipe_source_frames_processed_total\{pipeline_id="[0-9a-f-]{36}",'
            r'source_id="0"\} (\d+)\.0$',
            out,
            flags=re.MULTILINE,
        )
        assert processed and int(processed.group(1)) > 0, shown
        assert re.search(r"^15$", out, flags=re.MULTILINE), shown  # 14 buckets and +Inf
        assert (tmp_path / "framepipe-clip.mp4").exists()
        assert "drops by reason" in out and "recent events" in out, shown
        assert re.search(r"terminated [0-9a-f-]{36}", out), shown
        errors = result.stderr.strip().splitlines()
        assert errors[-1].startswith("framepipe: not_found:") and "hint:" in errors[-1], shown
        assert "Traceback" not in result.stderr, shown


def test_readme_run_examples_run(tmp_path: Path) -> None:
    block = shell_blocks(section(README.read_text(), "Running one pipeline"))
    assert len(block) == 1, "one example block"
    result = run_session(block[0], tmp_path, session_env(tmp_path))
    shown = f"stdout:\n{result.stdout[-6000:]}\nstderr:\n{result.stderr[-3000:]}"
    assert result.returncode == 0, shown
    out = " ".join(result.stdout.split())
    assert "│ results │ 200 │" in out and "│ frames processed │ 200 │" in out, shown
    assert "annotated.mp4: 200 frames written, 0 dropped" in out, shown
    assert (tmp_path / "annotated.mp4").stat().st_size > 0
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["results"] == 40 and summary["frames_dropped"] == {"max_fps": 160}, shown
    assert summary["detections"].get("face", 0) > 0, shown
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("framepipe: video_reference 'no-such-video.mp4' not found"), shown
    assert "(hint: " in error and "Traceback" not in result.stderr, shown


def test_readme_python_pipeline_example_runs(tmp_path: Path) -> None:
    """The first example of "Use it": a `Pipeline` with a model, run as written from a
    directory of the user's own (the bundled video is found through framepipe.data)."""
    blocks = re.findall(r"```python\n(.*?)```", section(README.read_text(), "Use it"), re.DOTALL)
    result = subprocess.run(
        [sys.executable, "-c", blocks[0]],
        cwd=tmp_path,
        env=session_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    shown = f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    assert result.returncode == 0, shown
    lines = result.stdout.splitlines()
    # The 200-frame 25 fps demo video at max_fps=10: 80 frames, subsampled by its timeline.
    assert len(lines) == 80, shown
    frame_ids = [int(line.split(" ", 1)[0]) for line in lines]
    assert frame_ids == sorted(frame_ids) and frame_ids[0] == 1, shown
    assert sum("'class': 'face'" in line for line in lines) > 40, shown


def test_readme_tcp_client_example_shows_results(tmp_path: Path) -> None:
    """The "Use it" example against a running manager (`framepipe serve`), run as written from
    a directory of the user's own; only its port 7070 becomes the test manager's."""
    blocks = re.findall(r"```python\n(.*?)```", section(README.read_text(), "Use it"), re.DOTALL)
    example = next(b for b in blocks if "SyncStreamManagerClient.init" in b)
    assert example.count('"127.0.0.1", 7070,') == 1
    with running_manager() as manager:
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                example.replace('"127.0.0.1", 7070,', f'"127.0.0.1", {manager.port},'),
            ],
            cwd=tmp_path,
            env=session_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        pipelines = manager.request({"type": "list_pipelines"})["response"]["pipelines"]
    shown = f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    assert result.returncode == 0, shown
    lines = result.stdout.splitlines()
    assert len(lines) >= 10, shown  # it waited for results instead of printing empty lists
    frame_ids = [int(line.split(" ", 1)[0]) for line in lines]
    assert frame_ids == sorted(frame_ids), shown
    assert sum("'class': 'face'" in line for line in lines) >= 5, shown
    assert pipelines == [], "the example terminates its pipeline"
