"""Every shipped profile decodes its test case: a register dump and the values it must give (as Telegraf's modbus
plugin keeps its cases).

A case is a folder ``tests/edge/profile_cases/<profile>/`` with

- ``registers.yaml``: ``holding:`` and/or ``input:``, each a map from a start address to the 16-bit words found
  there (``40083: [0x09C4, 0xFFFF]``). The words are written from the manufacturer's register tables (by hand or
  with ``struct``), never with energyhub's own encoder, so a wrong type, word order, scale or address in the
  profile shows here. Registers a merged read spans but the dump leaves out read as 0, as unused registers do.
- ``expected.yaml``: ``values:``, every value of the profile and what it decodes to (``null`` for "no value": a
  not-implemented marker), and optionally ``setpoints:``, each setpoint's value in real units and the words the
  edge must write for it (``{value: 50, words: [500]}``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from energyhub.edge.register_map import BlockDecoder, plan_reads
from energyhub.edge.setpoints import decode_words, encode_words
from energyhub.wire.profile import load_profile, shipped_profiles

CASES = Path(__file__).parent / "profile_cases"
SUNSPEC_DISCOVERED = {
    "sunspec_inverter",
    "sunspec_battery",
}  # also covered by tests/edge/test_edge_sunspec.py


def _read(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path}: expected a mapping"
    return data


def _dump(case: Path) -> dict[str, dict[int, int]]:
    """Register address -> word, per function, from a case's registers.yaml."""
    data = _read(case / "registers.yaml")
    assert set(data) <= {"holding", "input"}, f"{case}/registers.yaml: only holding and input"
    out: dict[str, dict[int, int]] = {}
    for function, runs in data.items():
        words = out.setdefault(function, {})
        for start, run in runs.items():
            assert isinstance(start, int), f"{case}: {function} {start!r}: an address"
            assert isinstance(run, list), f"{case}: {function} {start}: a list of words"
            for i, word in enumerate(run):
                assert isinstance(word, int), f"{case}: {function} {start}+{i}: {word!r}"
                assert 0 <= word <= 0xFFFF, f"{case}: {function} {start}+{i}: {word:#x} is not 16 bits"
                assert start + i not in words, f"{case}: {function} register {start + i} given twice"
                words[start + i] = word
    return out


def _close(got: float | None, want: float | None) -> bool:
    if want is None or got is None:
        return got is want
    return math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-6)


def test_every_shipped_profile_has_a_case_and_a_source():
    profiles = shipped_profiles()
    assert len(profiles) >= 30, f"the device library has {len(profiles)} profiles"
    cases = sorted(p.name for p in CASES.iterdir() if p.is_dir())
    assert sorted(set(cases) - set(profiles)) == [], "case folders without a profile"
    assert sorted(set(profiles) - set(cases)) == [], "profiles without a case folder"
    for name in profiles:
        source = load_profile(name).source
        assert source is not None, f"{name}: names no source document"


@pytest.mark.parametrize("name", shipped_profiles())
def test_profile_decodes_its_case(name: str):
    profile = load_profile(name)
    case = CASES / name
    dump = _dump(case)
    expected = _read(case / "expected.yaml")
    blocks = plan_reads(profile)
    words = []
    for block in blocks:
        held = dump.get(block.function, {})
        # Every value's own registers must be in the dump: a case that leaves one out tests nothing about it.
        for value in block.values:
            for address in range(value.address, value.address + value.registers):
                assert address in held, f"{name}: {value.name} needs {block.function} register {address}"
        words.append([held.get(block.address + i, 0) for i in range(block.count)])
    values = BlockDecoder(profile, blocks).decode(words)
    want = expected["values"]
    assert sorted(want) == sorted(values), f"{name}: expected.yaml must list every value of the profile"
    wrong = {k: (values[k], want[k]) for k in want if not _close(values[k], want[k])}
    assert not wrong, f"{name}: decoded != expected: {wrong}"
    # Every value that decodes to a number in the case: a profile whose case only says "no value" tests nothing.
    assert any(v is not None for v in values.values())
    setpoints = expected.get("setpoints", {})
    specs = {s.name: s for s in profile.setpoints}
    assert sorted(setpoints) == sorted(specs), f"{name}: expected.yaml must give every setpoint"
    for sp_name, case_sp in setpoints.items():
        spec = specs[sp_name]
        got = encode_words(spec, case_sp["value"], profile.word_order)
        assert got == case_sp["words"], f"{name}: setpoint {sp_name} {case_sp['value']} writes {got}"
        assert _close(decode_words(spec, got, profile.word_order), case_sp["value"])


def library_table() -> str:
    rows = ["| profile | roles | device | source document (version) |", "|---|---|---|---|"]
    for name in shipped_profiles():
        profile = load_profile(name)
        assert profile.source is not None
        roles = ", ".join(role.value for role in profile.roles)
        rows.append(
            f"| `{name}` | {roles} | {profile.description} | {profile.source.document} ({profile.source.version}) |"
        )
    return "\n".join(rows)


def test_the_library_table_in_the_docs_is_the_profiles():
    table = library_table()
    docs = (Path(__file__).resolve().parents[2] / "docs" / "profiles.md").read_text()
    assert table in docs, (
        "docs/profiles.md's library table differs from the profiles; replace it with:\n" + table
    )
