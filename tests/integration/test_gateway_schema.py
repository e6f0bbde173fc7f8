"""Schemathesis against the running gateway: generated requests (valid and invalid) for every
operation of its OpenAPI schema; no answer may be a server error, and every answer must match
the schema (status code, content type, body, headers)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.integration.gateway_harness import running_gateway

CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
    )
)
# Bounded so the run takes about a minute: the coverage phase (every field's boundaries and
# wrong types, ~900 requests) does not depend on it; it caps the random phase.
MAX_EXAMPLES = os.environ.get("FRAMEPIPE_SCHEMATHESIS_EXAMPLES", "10")


def test_generated_requests_get_no_server_error_and_match_the_schema(tmp_path: Path) -> None:
    with running_gateway({"FRAMEPIPE_TOKEN": "s3cret"}) as gateway:
        command = [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"{gateway.url}/openapi.json",
            "--header",
            "Authorization: Bearer s3cret",
            "--checks",
            CHECKS,
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            MAX_EXAMPLES,
            "--workers",
            "1",  # hypothesis' lambda descriptions are not thread-safe (AST recursion errors)
            "--request-timeout",
            "90",
            "--suppress-health-check",
            "all",
        ]
        result = subprocess.run(
            command, cwd=tmp_path, capture_output=True, text=True, timeout=540, check=False
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-12000:]
        generated = re.search(r"(\d+) generated", output)
        assert generated and int(generated.group(1)) > 0, output[-3000:]
        assert " passed" in output, output[-3000:]
