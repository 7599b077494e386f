import pytest

from energyhub.wire.topics import TopicError, TopicInfo, TopicKind, Topics

T = Topics(site="de-koumen")


@pytest.mark.parametrize(
    ("topic", "info"),
    [
        (T.state("gw-001"), TopicInfo(TopicKind.STATE, "de-koumen", gateway="gw-001")),
        (T.measurement("gw-001", "meter"), TopicInfo(TopicKind.MEASUREMENT, "de-koumen", "gw-001", "meter")),
        (T.setpoint("gw-002", "pv_1"), TopicInfo(TopicKind.SETPOINT, "de-koumen", "gw-002", "pv_1")),
        (T.ack("gw-002", "pv_1"), TopicInfo(TopicKind.ACK, "de-koumen", "gw-002", "pv_1")),
        (T.heartbeat(), TopicInfo(TopicKind.HEARTBEAT, "de-koumen")),
        (T.deadletter("ingest"), TopicInfo(TopicKind.DEADLETTER, "de-koumen", service="ingest")),
    ],
)
def test_round_trip(topic, info):
    assert T.parse(topic) == info


def test_layout_is_the_contract():
    assert T.measurement("gw-001", "meter") == "ehub/v1/de-koumen/gw/gw-001/meas/meter"
    assert T.state("gw-001") == "ehub/v1/de-koumen/gw/gw-001/state"
    assert T.heartbeat() == "ehub/v1/de-koumen/control/heartbeat"
    assert T.gateway_subtree("gw-001") == "ehub/v1/de-koumen/gw/gw-001"
    assert T.all_measurements() == "ehub/v1/de-koumen/gw/+/meas/+"
    assert Topics(site="x", root="ehub/v2").state("g") == "ehub/v2/x/gw/g/state"


@pytest.mark.parametrize(
    ("topic", "message"),
    [
        ("ehub/v1/other/gw/g/state", "is not under 'ehub/v1/de-koumen/'"),
        ("ehub/v1/de-koumen/gw/g/meas", "is not a known energyhub topic"),
        ("ehub/v1/de-koumen/gw/g/meas/d/extra", "is not a known energyhub topic"),
        ("ehub/v1/de-koumen/gw/G W/meas/d", "gateway 'G W' is not a valid identifier"),
        ("ehub/v1/de-koumen/gw/g/meas/+", "device '+' is not a valid identifier"),
        ("ehub/v1/de-koumen/gw//state", "gateway '' is not a valid identifier"),
        ("ehub/v1/de-koumen/control/heartbeat/x", "is not a known energyhub topic"),
    ],
)
def test_parse_rejects_with_reason(topic, message):
    with pytest.raises(TopicError, match=None) as info:
        T.parse(topic)
    assert message in str(info.value)


@pytest.mark.parametrize("bad", ["", "A", "a/b", "a+b", "#", "-x", "x" * 64, "é"])
def test_ids_are_bounded(bad):
    with pytest.raises(TopicError):
        T.measurement("gw-001", bad)


def test_bad_site_and_root():
    with pytest.raises(TopicError):
        Topics(site="De Koumen")
    with pytest.raises(TopicError):
        Topics(site="x", root="ehub/#")
