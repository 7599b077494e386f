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


def line_with(path: Path, text: str) -> int:
    """The 1-based line of ``path`` that contains ``text`` (once)."""
    found = [n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line]
    assert len(found) == 1, found
    return found[0]


def battery(profile: str) -> dict:
    return {
        "id": "bat1",
        "role": "battery",
        "profile": profile,
        "power_kw": 50,
        "capacity_kwh": 100,
        "modbus": {"host": "127.0.0.1", "port": 20001, "unit_id": 3},
    }


def test_check_refuses_an_unknown_profile_and_one_that_does_not_serve_the_role(tmp_path):
    doc = base()
    doc["loops"][0]["connections"][0]["devices"].append(battery("eastron_sdm630"))
    doc["loops"][1]["micro_groups"][0]["connections"][1]["devices"][0]["profile"] = "eastron_sdm603"
    path = tmp_path / "estate.yaml"
    path.write_text(dump(doc))
    result = runner.invoke(app, ["community", "check", str(path)])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines[0] == f"{path}: 2 errors"
    assert (
        f"  {path}:{line_with(path, 'profile: eastron_sdm603')}: "
        "loops[1].micro_groups[0].connections[1].devices[0].profile: device 'meter' of connection 'c-004': "
        "profile 'eastron_sdm603' cannot be used: unknown profile 'eastron_sdm603' (did you mean eastron_sdm630"
        in result.output
    )
    battery_line = line_with(path, "role: battery") + 1  # its profile: follows the role
    assert (
        f"  {path}:{battery_line}: loops[0].connections[0].devices[2].profile: device 'bat1' of connection "
        "'c-001': has role 'battery', but profile 'eastron_sdm630' serves meter, load: give it a profile that "
        "serves 'battery', or correct the role" in lines
    )


def test_check_refuses_a_custom_profile_that_lacks_what_its_role_needs(tmp_path):
    custom = tmp_path / "my_battery.yaml"
    custom.write_text(
        "name: my_battery\n"
        "description: a battery without its setpoints\n"
        "roles: [battery]\n"
        "values:\n"
        "  - {name: power_w, address: 0, type: float32}\n"
        "  - {name: soc_pct, address: 2, type: float32}\n"
    )
    doc = base()
    doc["loops"][0]["connections"][0]["devices"].append(battery(str(custom)))
    path = tmp_path / "estate.yaml"
    path.write_text(dump(doc))
    result = runner.invoke(app, ["community", "check", str(path)])
    assert result.exit_code == 1, result.output
    assert f"{path}: 1 error" in result.output
    assert (
        f"{path}:{line_with(path, str(custom))}: loops[0].connections[0].devices[2].profile: device 'bat1' of "
        f"connection 'c-001': profile '{custom}' cannot be used: {custom}:3: roles[0]: lacks setpoint "
        "'charge_rate_pct', setpoint 'discharge_rate_pct'" in result.output
    )
    # With the setpoints the same custom profile serves the battery, and the file is valid.
    custom.with_name("full_battery.yaml").write_text(
        custom.read_text().replace("my_battery", "full_battery") + "setpoints:\n"
        "  - {name: charge_rate_pct, address: 10, type: float32, min: 0, max: 100}\n"
        "  - {name: discharge_rate_pct, address: 12, type: float32, min: 0, max: 100}\n"
    )
    path.write_text(path.read_text().replace("my_battery.yaml", "full_battery.yaml"))
    result = runner.invoke(app, ["community", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert f"{path}: valid" in result.output


def test_check_accepts_sunspec_for_pv_and_battery_only(tmp_path):
    doc = base()
    doc["loops"][0]["connections"][0]["devices"].append(battery("sunspec"))
    path = tmp_path / "estate.yaml"
    path.write_text(dump(doc))
    assert runner.invoke(app, ["community", "check", str(path)]).exit_code == 0
    doc["loops"][0]["connections"][0]["devices"][0]["profile"] = "sunspec"  # the grid meter
    path.write_text(dump(doc))
    result = runner.invoke(app, ["community", "check", str(path)])
    assert result.exit_code == 1
    assert (
        "device 'meter' of connection 'c-001': has role 'meter', but profile 'sunspec' serves pv, battery"
        in (result.output)
    )


def test_the_example_community_checks():
    result = runner.invoke(app, ["community", "check", str(REPO / "examples" / "de-koumen.yaml")])
    assert result.exit_code == 0, result.output


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
