"""A bad community file gets every error at once, each naming file, line, path, what is wrong and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from energyhub.domain.community import CommunityError, load_community, parse_community
from tests.communities import base, connection, dump, ean


def errors(doc) -> list[tuple[str, str]]:
    with pytest.raises(CommunityError) as info:
        parse_community(dump(doc), file="estate.yaml")
    return [(issue.path, issue.message) for issue in info.value.issues]


def only_error(doc) -> tuple[str, str]:
    found = errors(doc)
    assert len(found) == 1, found
    return found[0]


def test_the_base_is_valid():
    community = parse_community(dump(base()))
    assert [loop.id for loop in community.loops] == ["loop-1", "loop-2"]


def test_ean_check_digit():
    doc = base()
    doc["loops"][0]["connections"][1]["ean"] = "871600000000000020"
    assert only_error(doc) == (
        "loops[0].connections[1].ean",
        "check digit of 871600000000000020 is 0, expected 4: the EAN has a typo",
    )


def test_ean_length_and_unquoted_ean():
    doc = base()
    doc["loops"][0]["connections"][0]["ean"] = "87160000000000001"
    doc["loops"][0]["connections"][1]["ean"] = int(ean(2))  # unquoted in YAML: accepted, it has 18 digits
    assert only_error(doc) == (
        "loops[0].connections[0].ean",
        "'87160000000000001' is not 18 digits (it has 17 characters)",
    )


def test_duplicate_ids_eans_gateways_devices_and_addresses():
    doc = base()
    conns = doc["loops"][0]["connections"]
    conns[1]["id"] = "c-001"
    conns[1]["ean"] = conns[0]["ean"]
    conns[1]["gateways"] = [{"id": "gw-001"}]
    conns[1]["devices"][0]["modbus"] = dict(conns[0]["devices"][0]["modbus"])
    conns[0]["devices"][1]["id"] = "meter"
    conns[0]["devices"][1]["role"] = "load"
    doc["group_agreements"][0]["connections"] = ["c-001", "c-003"]
    found = errors(doc)
    assert (
        "loops[0].connections[0].devices[1].id",
        "duplicate device id 'meter': also at loops[0].connections[0].devices[0].id; "
        "device ids are unique per gateway (gw-001)",
    ) in found
    assert (
        "loops[0].connections[1].id",
        "duplicate id 'c-001': also at loops[0].connections[0].id; ids must be unique across the hub, loops, "
        "micro groups, connections and group agreements",
    ) in found
    assert (
        "loops[0].connections[1].ean",
        f"duplicate EAN '{ean(1)}': also at loops[0].connections[0].ean; every connection has its own EAN",
    ) in found
    assert (
        "loops[0].connections[1].gateways[0].id",
        "duplicate gateway id 'gw-001': also at loops[0].connections[0].gateways[0].id; "
        "gateway ids are unique in the community",
    ) in found
    assert (
        "loops[0].connections[1].devices[0].modbus",
        "duplicate Modbus address '127.0.0.1:20001 unit 1': also at loops[0].connections[0].devices[0].modbus; "
        "two devices cannot answer at the same host, port and unit id",
    ) in found
    assert len(found) == 5, found


def test_device_on_unknown_gateway():
    doc = base()
    doc["loops"][0]["connections"][0]["devices"][1]["gateway"] = "gw-999"
    assert only_error(doc) == (
        "loops[0].connections[0].devices[1].gateway",
        "unknown gateway 'gw-999': connection 'c-001' has gateways [gw-001]; add it under gateways or fix the name",
    )


def test_device_without_gateway_when_the_connection_has_two():
    doc = base()
    doc["loops"][0]["connections"][0]["gateways"].append({"id": "gw-101"})
    doc["loops"][0]["connections"][0]["devices"][1]["gateway"] = "gw-101"
    assert only_error(doc) == (
        "loops[0].connections[0].devices[0].gateway",
        "is required: connection 'c-001' has 2 gateways, so say which one polls this device",
    )


@pytest.mark.parametrize(
    ("where", "field", "path"),
    [
        (("loops", 0, "connections", 0), "capacity_kva", "loops[0].connections[0].capacity_kva"),
        (("hub", "limits"), "import_kw", "hub.limits.import_kw"),
        (("loops", 0, "connections", 1, "devices", 1), "kwp", "loops[0].connections[1].devices[1].kwp"),
    ],
)
def test_negative_capacities(where, field, path):
    doc = base()
    node = doc
    for key in where:
        node = node[key]
    node[field] = -5
    assert only_error(doc) == (path, "must be at least 0, got -5: capacities and limits are not negative")


def test_contract_above_connection_capacity():
    doc = base()
    doc["loops"][0]["connections"][0]["limits"]["import_kw"] = 200
    assert only_error(doc) == (
        "loops[0].connections[0]",
        "limits.import_kw 200 kW exceeds the connection's capacity_kva 173: contracted capacity cannot be larger "
        "than the connection",
    )


def test_connection_without_contract():
    doc = base()
    del doc["loops"][0]["connections"][0]["limits"]["export_kw"]
    assert only_error(doc) == (
        "loops[0].connections[0]",
        "a connection needs limits.import_kw and limits.export_kw: its contracted transport capacity (GTV) for "
        "offtake and feed-in in kW (0 for none)",
    )


def test_overlapping_time_blocks_including_past_midnight():
    doc = base()
    doc["loops"][0]["connections"][0]["limits"]["time_blocks"] = [
        {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "22:00", "end": "06:00", "import_kw": 40},
        {"days": ["sat", "sun"], "start": "00:00", "end": "24:00", "import_kw": 40},
    ]
    assert only_error(doc) == (
        "loops[0].connections[0].limits.time_blocks",
        "[0] (mon,tue,wed,thu,fri 22:00-06:00) and [1] (sat,sun 00:00-24:00) overlap: a quarter hour can be in "
        "one time block only",
    )


def test_time_blocks_that_touch_do_not_overlap():
    doc = base()
    doc["loops"][0]["connections"][0]["limits"]["time_blocks"] = [
        {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "22:00", "end": "06:00", "import_kw": 40},
        {"days": ["sat"], "start": "06:00", "end": "24:00", "import_kw": 40},
        {"days": ["sun"], "start": "00:00", "end": "22:00", "import_kw": 40},
    ]
    parse_community(dump(doc))


def test_sunday_night_block_wraps_into_monday():
    doc = base()
    doc["loops"][0]["connections"][0]["limits"]["time_blocks"] = [
        {"days": ["sun"], "start": "22:00", "end": "02:00", "import_kw": 40},
        {"days": ["mon"], "start": "01:00", "end": "03:00", "import_kw": 40},
    ]
    path, message = only_error(doc)
    assert path == "loops[0].connections[0].limits.time_blocks"
    assert message.startswith("[0] (sun 22:00-02:00) and [1] (mon 01:00-03:00) overlap")


def test_time_not_on_a_quarter_hour():
    doc = base()
    doc["loops"][0]["connections"][0]["limits"]["time_blocks"] = [
        {"days": ["mon"], "start": "22:10", "end": "06:00", "import_kw": 40}
    ]
    assert only_error(doc) == (
        "loops[0].connections[0].limits.time_blocks[0].start",
        "22:10 is not on a quarter hour: contracts count per quarter hour (use :00, :15, :30, :45)",
    )


def test_unquoted_yaml_time_is_read_as_clock_time():
    # YAML 1.1 makes an unquoted 22:00 the integer 1320; the loader must still read it as 22:00.
    marker = "      import_kw: 120\n      export_kw: 0\n"
    text = dump(base())
    assert marker in text
    text = text.replace(
        marker,
        marker + "      time_blocks:\n      - {days: [mon], start: 22:00, end: 23:00, import_kw: 10}\n",
        1,
    )
    community = parse_community(text)
    block = next(community.connections())[2].limits.time_blocks[0]
    assert (block.start, block.end) == (22 * 60, 23 * 60)


def test_profile_without_96_values():
    doc = base()
    doc["loops"][0]["connections"][0]["limits"]["day_ahead"] = {
        "import_kw": 50,
        "profiles": [{"date": "2026-06-01", "import_kw": [10] * 95}],
    }
    assert only_error(doc) == (
        "loops[0].connections[0].limits.day_ahead.profiles[0]",
        "import_kw has 95 values, expected 96 (one per quarter hour of 2026-06-01)",
    )


@pytest.mark.parametrize(
    ("day", "count", "words"), [("2026-03-29", 92, "starts"), ("2026-10-25", 100, "ends")]
)
def test_profile_on_dst_days_needs_92_or_100_values(day, count, words):
    doc = base()
    doc["loops"][0]["connections"][0]["limits"]["day_ahead"] = {
        "import_kw": 50,
        "profiles": [{"date": day, "import_kw": [10] * 96}],
    }
    assert only_error(doc) == (
        "loops[0].connections[0].limits.day_ahead.profiles[0]",
        f"import_kw has 96 values, expected {count} (one per quarter hour of {day}; {day} is the day daylight saving "
        f"{words} in Europe/Amsterdam, {count // 4} hours long)",
    )
    doc["loops"][0]["connections"][0]["limits"]["day_ahead"]["profiles"][0]["import_kw"] = [10] * count
    parse_community(dump(doc))


def test_profile_above_contracted_non_firm_capacity():
    doc = base()
    doc["loops"][0]["connections"][0]["limits"]["day_ahead"] = {
        "import_kw": 50,
        "profiles": [{"date": "2026-06-01", "import_kw": [10] * 95 + [60]}],
    }
    assert only_error(doc) == (
        "loops[0].connections[0].limits.day_ahead",
        "profiles[0].import_kw announces 60 kW, above the contracted non-firm 50 kW",
    )


def test_unknown_field_and_missing_field():
    doc = base()
    doc["loops"][0]["conections"] = []
    del doc["hub"]["id"]
    assert errors(doc) == [
        ("hub.id", "is required: add it"),
        ("loops[0].conections", "is not a known field: remove it or correct its spelling"),
    ]


def test_wrong_role_and_wrong_type():
    doc = base()
    doc["loops"][0]["connections"][0]["devices"][1]["role"] = "solar"
    doc["loops"][0]["connections"][0]["capacity_kva"] = "big"
    found = dict(errors(doc))
    assert (
        found["loops[0].connections[0].devices[1].role"]
        == "Input should be 'meter', 'pv', 'battery', 'ev', 'load', 'gas' or 'water'"
    )
    assert found["loops[0].connections[0].capacity_kva"] == (
        "input should be a valid number, unable to parse string as a number, got 'big'"
    )


def test_group_agreement_members():
    doc = base()
    doc["group_agreements"].append(
        {"id": "group-2", "connections": ["c-002", "c-404"], "limits": {"import_kw": 100, "export_kw": 0}}
    )
    assert errors(doc) == [
        (
            "group_agreements[1].connections[0]",
            "connection 'c-002' is already in the group agreement at group_agreements[0]; a connection is in at most one",
        ),
        (
            "group_agreements[1].connections[1]",
            "unknown connection 'c-404': a group agreement lists connection ids",
        ),
    ]


def test_every_error_at_once_with_file_and_line():
    doc = base()
    doc["loops"][0]["connections"][1]["ean"] = "871600000000000020"
    doc["loops"][0]["connections"][0]["capacity_kva"] = -5
    doc["loops"][1]["connections"].append(connection(6, gateway=False, id="c-001"))
    with pytest.raises(CommunityError) as info:
        parse_community(dump(doc), file="estate.yaml")
    text = str(info.value)
    lines = text.splitlines()
    assert lines[0] == "estate.yaml: 3 errors"
    assert all(line.startswith("  estate.yaml:") for line in lines[1:])
    # Each line carries the line number of the node it names.
    yaml_lines = dump(doc).splitlines()
    for issue in info.value.issues:
        assert issue.line > 0
        key = issue.path.rsplit(".", 1)[-1].split("[")[0]
        assert key in yaml_lines[issue.line - 1], (issue, yaml_lines[issue.line - 1])


def test_yaml_syntax_error_names_the_line():
    with pytest.raises(CommunityError) as info:
        parse_community("community:\n  id: x\n  name: [unclosed\nhub: {}\n", file="broken.yaml")
    assert len(info.value.issues) == 1
    assert str(info.value).startswith("broken.yaml: 1 error\n  broken.yaml:4: (document): not valid YAML:")


def test_duplicate_yaml_keys_are_errors():
    text = dump(base()).replace("  name: Substation\n", "  name: Substation\n  name: Other\n", 1)
    with pytest.raises(CommunityError) as info:
        parse_community(text, file="dup.yaml")
    assert [(i.path, i.message) for i in info.value.issues] == [
        ("hub.name", "duplicate key (first on line 8): keep one")
    ]


def test_unreadable_file(tmp_path: Path):
    with pytest.raises(CommunityError, match=r"missing.yaml: \(document\): cannot be read: No such file"):
        load_community(tmp_path / "missing.yaml")


def test_not_a_mapping():
    with pytest.raises(CommunityError, match="must be a mapping with community, hub and loops"):
        parse_community("- just\n- a list\n")
