"""The energyhub command as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from energyhub.cli.main import app
from energyhub.domain.topology import Community
from tests.communities import base, dump

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_check_valid_file_prints_a_summary(tmp_path):
    path = tmp_path / "estate.yaml"
    path.write_text(dump(base()))
    result = runner.invoke(app, ["community", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert f"{path}: valid" in result.output
    assert "companies      5 (5 connections) on 2 loops (1 micro groups)" in result.output
    assert "PV             0.20 MWp at 4 companies" in result.output
    assert "contracted     0.60 MW offtake, 0.00 MW feed-in" in result.output
    assert "hub limit      5.00 MW offtake, 0.00 MW feed-in" in result.output


def test_check_invalid_file_lists_every_error_and_fails(tmp_path):
    doc = base()
    doc["loops"][0]["connections"][1]["ean"] = "871600000000000020"
    doc["loops"][0]["connections"][0]["capacity_kva"] = -1
    path = tmp_path / "bad.yaml"
    path.write_text(dump(doc))
    result = runner.invoke(app, ["community", "check", str(path)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines[0] == f"{path}: 2 errors"
    assert any(f"{path}:" in line and "loops[0].connections[1].ean: check digit" in line for line in lines)
    assert any("loops[0].connections[0].capacity_kva: must be at least 0" in line for line in lines)


def test_limits_command(tmp_path):
    doc = base()
    doc["loops"][0]["connections"][0]["limits"]["time_blocks"] = [
        {"days": ["tue"], "start": "22:00", "end": "06:00", "import_kw": 40}
    ]
    path = tmp_path / "estate.yaml"
    path.write_text(dump(doc))
    result = runner.invoke(app, ["community", "limits", str(path), "c-001", "--at", "2026-06-02T22:05+02:00"])
    assert result.exit_code == 0, result.output
    assert "quarter hour from 2026-06-02T20:00:00+00:00" in result.output
    row = next(line for line in result.output.splitlines() if line.startswith("c-001"))
    assert row.split()[:5] == ["c-001", "connection", "160", "0", "173"]
    assert "firm+time_blocks[0] / firm" in row
    result = runner.invoke(app, ["community", "limits", str(path), "nope", "--at", "2026-06-02T22:05+02:00"])
    assert result.exit_code == 2
    assert "unknown node 'nope'" in result.output
    result = runner.invoke(app, ["community", "limits", str(path), "--at", "2026-06-02T22:05"])
    assert result.exit_code == 2
    assert "has no timezone" in result.output


def test_schema_is_committed_and_current():
    committed = json.loads((REPO / "docs" / "community.schema.json").read_text())
    assert committed == Community.model_json_schema(), (
        "run: energyhub community schema --out docs/community.schema.json"
    )


def test_installed_console_script():
    exe = Path(sys.executable).parent / "energyhub"
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in ("community", "broker", "services", "demo"):
        assert command in result.stdout
