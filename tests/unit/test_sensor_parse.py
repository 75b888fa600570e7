"""Sensor parsers on captured real outputs (tests/fixtures/sensors) and on bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trunkguard.watch.sensor_parse import (
    FALSE_WORDS,
    TRUE_WORDS,
    SensorReadError,
    hwmon_value,
    millidegrees,
    number_as_bool,
    parse_bool,
    parse_ipmitool_sdr,
    parse_lm_sensors,
    parse_number,
    parse_payload,
    parse_value,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "sensors"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def error(fn: Any, *args: Any) -> str:
    with pytest.raises(SensorReadError) as e:
        fn(*args)
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


# ---- command output -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("42\n", 42.0), ("\n  -3.5 \nignored", -3.5), ("1e2", 100.0), (".5", 0.5), ("+7.", 7.0)],
)
def test_number(text: str, value: float) -> None:
    assert parse_number(text) == value
    assert parse_value(text, "number") == value


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "empty output"),
        (" \n\t\n", "empty output"),
        ("nan", "'nan' is not a number"),
        ("inf\n", "'inf' is not a number"),
        ("1e999", "not a finite number"),
        ("1_000", "is not a number"),
        ("٤٢", "is not a number"),  # float() takes Arabic-Indic digits; we do not
        ("23.5 C", "'23.5 C' is not a number"),
        ("x" * 500, "..."),  # quoted, but cut short
    ],
)
def test_bad_number(text: str, words: str) -> None:
    msg = error(parse_number, text)
    assert words in msg and len(msg) < 120


def test_bool_table_is_case_insensitive() -> None:
    for word in TRUE_WORDS:
        assert parse_bool(word.upper() + "\n") is True
        assert parse_value(f"  {word.title()}  ", "bool") is True
    for word in FALSE_WORDS:
        assert parse_bool(word) is False
    assert TRUE_WORDS.isdisjoint(FALSE_WORDS)


@pytest.mark.parametrize("text", ["open", "closed", "2", "maybe", "", "truee"])
def test_bad_bool(text: str) -> None:
    assert "bool" in error(parse_bool, text) or text.strip() == ""


# ---- MQTT payloads -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "field", "kind", "value"),
    [
        (b"23.5", None, "number", 23.5),
        (b" 23 \n", None, "number", 23.0),
        (b'"21.25"', None, "number", 21.25),
        (b"ON", None, "bool", True),
        (b"false", None, "bool", False),
        (b"0", None, "bool", False),
        (b'{"temperature": 24.1, "humidity": 40}', "temperature", "number", 24.1),
        (b'{"data": {"temp": "19.5"}}', "data.temp", "number", 19.5),
        (b'{"contact": true}', "contact", "bool", True),
        (b'{"state": "OFF"}', "state", "bool", False),
        (b'{"alarm": 1}', "alarm", "bool", True),
    ],
)
def test_payload(payload: bytes, field: str | None, kind: Any, value: float | bool) -> None:
    got = parse_payload(payload, field, kind)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(
    ("payload", "field", "kind", "words"),
    [
        (b"\xff\xfe", None, "number", "not UTF-8"),
        (b"", None, "number", "empty payload"),
        (b'{"temp": 20}', None, "number", "set a field"),
        (b'{"temp": 20', "temp", "number", "invalid JSON"),
        (b'{"data": {"t": 1}}', "data.temp", "number", "missing 'temp'"),
        (b'{"data": [1]}', "data.temp", "number", "'temp' is not in an object"),
        (b'{"temp": true}', "temp", "number", "a bool, not a number"),
        (b'{"temp": null}', "temp", "number", "JSON null, not a number"),
        (b'{"temp": {"v": 1}}', "temp", "number", "JSON object, not a number"),
        (b'{"temp": NaN}', "temp", "number", "invalid JSON"),
        (b'{"temp": 1e400}', "temp", "number", "not a finite number"),
        (b'{"temp": "hot"}', "temp", "number", "'hot' is not a number"),
        (b'{"on": 2}', "on", "bool", "not a bool (0 or 1)"),
        (b'{"on": [true]}', "on", "bool", "JSON array, not a bool"),
        (b"[" * 50_000, "x", "number", "nested too deeply"),
        (b'{"t": ' + b"9" * 5000 + b"}", "t", "number", "invalid JSON"),
    ],
)
def test_bad_payload(payload: bytes, field: str | None, kind: Any, words: str) -> None:
    assert words in error(parse_payload, payload, field, kind)


# ---- lm-sensors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "chip", "feature", "sub", "value"),
    [
        ("sensors-j-nct6798-nvme-coretemp.json", "coretemp-isa-*", "Package id 0", None, 37.0),
        ("sensors-j-nct6798-nvme-coretemp.json", "coretemp-isa-0000", "Core 31", None, 35.0),
        ("sensors-j-nct6798-nvme-coretemp.json", "nct6798-*", "CPUTIN", None, 37.0),
        ("sensors-j-nct6798-nvme-coretemp.json", "nct6798-*", "SYSTIN", "temp1_crit", 100.0),
        ("sensors-j-nct6798-nvme-coretemp.json", "nct6798-*", "AUXTIN3", None, -1.0),
        ("sensors-j-nct6798-nvme-coretemp.json", "nct*", "fan1", None, 1278.0),
        ("sensors-j-nct6798-nvme-coretemp.json", "nct*", "intrusion0", "intrusion0_alarm", 1.0),
        ("sensors-j-nct6798-nvme-coretemp.json", "nvme-*", "Composite", None, 34.85),
        ("sensors-j-acpitz-coretemp-2nvme.json", "acpitz-acpi-0", "temp1", None, 27.8),
        ("sensors-j-acpitz-coretemp-2nvme.json", "nvme-pci-0200", "Composite", None, 30.85),
        ("sensors-j-k10temp-nvme.json", "k10temp-pci-*", "Tctl", None, 51.625),
        ("sensors-j-k10temp-nvme.json", "nvme-pci-0100", "Sensor 2", None, 41.85),
        ("sensors-j-3.6.0-two-chips-named.json", "drivetemp-*", "temp1", None, 22.0),
        ("sensors-j-3.6.0-two-chips-named.json", "k10temp-*", "Tctl", None, 25.5),
        ("sensors-j-3.4.0-stderr-merged.txt", "pch_skylake-*", "temp1", None, 56.5),
        ("sensors-j-3.4.0-stderr-merged.txt", "dell_smm-*", "Ambient", None, 60.0),
    ],
)
def test_lm_sensors(name: str, chip: str, feature: str, sub: str | None, value: float) -> None:
    assert parse_lm_sensors(fixture(name), chip, feature, sub) == value


@pytest.mark.parametrize(
    ("name", "chip", "feature", "sub", "words"),
    [
        # The 3.6.0 trailing comma is tolerated: the chip is found, it just has nothing.
        ("sensors-j-3.6.0-chip-without-features.json", "k10temp-*", "Tctl", None, "features: none"),
        ("sensors-j-acpitz-coretemp-2nvme.json", "nvme-pci-*", "Composite", None, "2 chips match"),
        ("sensors-j-acpitz-coretemp-2nvme.json", "k10temp-*", "Tctl", None, "'acpitz-acpi-0'"),
        ("sensors-j-k10temp-nvme.json", "k10temp-*", "Tdie", None, "'Tctl', 'Tccd1', 'Tccd2'"),
        ("sensors-j-k10temp-nvme.json", "k10temp-*", "Tctl", "temp1_max", "'temp1_max' missing"),
        ("sensors-j-3.4.0-stderr-merged.txt", "iwlwifi-*", "temp1", None, "no reading"),
        ("sensors-j-nct6798-nvme-coretemp.json", "nct*", "intrusion0", None, "no reading"),
        ("sensors-j-nct6798-nvme-coretemp.json", "*", "temp1", None, "3 chips match"),
    ],
)
def test_lm_sensors_errors(name: str, chip: str, feature: str, sub: str | None, words: str) -> None:
    assert words in error(parse_lm_sensors, fixture(name), chip, feature, sub)


def test_lm_sensors_repeated_feature_names() -> None:
    # dell_smm with newer lm-sensors prints two features called "CPU" (issue on
    # Meliox/PVE-mods#113): a plain dict would silently keep only the last one.
    text = '{"dell_smm-isa-0000":{"CPU":{"temp1_input":45.0},"CPU":{"temp2_input":49.0}}}'
    assert "2 values 'temp1_input', 'temp2_input'" in error(
        parse_lm_sensors, text, "dell_smm-*", "CPU", None
    )
    assert parse_lm_sensors(text, "dell_smm-*", "CPU", "temp2_input") == 49.0


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "empty"),
        ("ERROR: Can't get value of subfeature temp1_input: Can't read\n", "empty"),
        ("[1, 2]", "not a JSON object"),
        ('{"c":{"f":{"temp1_input": NaN}}}', "not valid JSON"),
        ('{"c":{"f":{"temp1_input": "45"}}}', "temp1_input is not a number"),
        ('{"c":{"f":{"temp1_input": true}}}', "temp1_input is not a number"),
        ('{"c":{"f":{"temp1_input": 1e999}}}', "not a finite number"),
        ('{"c": 1}', "not an object"),
        ('{"c":{"f":{"temp1_input": 1}}} trailing', "not valid JSON"),
        ('{"a":' * 50_000, "nested too deeply"),
    ],
)
def test_lm_sensors_bad_output(text: str, words: str) -> None:
    assert words in error(parse_lm_sensors, text, "c", "f", None)


# ---- ipmitool --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "sensor", "value"),
    [
        ("ipmitool-dell-r510-idrac6-sdr-type-temperature.txt", "Ambient Temp@0Eh", 29.0),
        ("ipmitool-dell-r730xd-idrac8-elist-temp.txt", "Inlet Temp", 24.0),
        ("ipmitool-dell-r730xd-idrac8-elist-temp.txt", "  Exhaust Temp ", 33.0),
        ("ipmitool-dell-r730xd-idrac8-elist-temp.txt", "Temp@0Eh", 43.0),
        ("ipmitool-dell-r730xd-idrac8-elist-temp.txt", "Temp@0eh", 43.0),
        ("ipmitool-dell-idrac6-sdr-elist-all.txt", "Ambient Temp@0Eh", 19.0),
        ("ipmitool-supermicro-sdr-elist-full.txt", "CPU1 Temp", 33.0),
        ("ipmitool-supermicro-sdr-elist-full.txt", "P2-DIMMD1 Temp", 42.0),
        ("ipmitool-supermicro-sdr-list-full.txt", "System Temp", 23.0),
        ("ipmitool-supermicro-sdr-list-full.txt", "FANA", 3500.0),  # RPM, not converted
        ("ipmitool-hp-dl380g7-sdr.txt", "Temp 1", 16.0),
        ("ipmitool-hp-dl380g7-sdr.txt", "Temp 16", 23.0),
        ("ipmitool-hp-dl380g7-sdr.txt", "Fan 6", 13.72),
    ],
)
def test_ipmitool(name: str, sensor: str, value: float) -> None:
    assert parse_ipmitool_sdr(fixture(name), sensor) == value


@pytest.mark.parametrize(
    ("name", "sensor", "words"),
    [
        ("ipmitool-dell-r730xd-idrac8-elist-temp.txt", "Temp@0Fh", "no reading (Disabled)"),
        (
            "ipmitool-dell-r730xd-idrac8-elist-temp.txt",
            "Temp",
            "2 IPMI sensors named 'Temp': '0Eh', '0Fh'; name one as 'Temp@0Fh'",
        ),
        ("ipmitool-dell-r510-idrac6-sdr-type-temperature.txt", "Temp", "7 IPMI sensors"),
        ("ipmitool-dell-r510-idrac6-sdr-type-temperature.txt", "Planar Temp", "no reading"),
        ("ipmitool-supermicro-sdr-elist-full.txt", "P1-DIMMA1 Temp", "no reading (No Reading)"),
        ("ipmitool-supermicro-sdr-list-full.txt", "MB_10G Temp", "no reading"),
        ("ipmitool-dell-idrac6-sdr-elist-all.txt", "CMOS Battery", "no reading (empty)"),
        ("ipmitool-dell-idrac6-sdr-elist-all.txt", "VCORE PG@12h", "'State Deasserted'"),
        ("ipmitool-hp-dl380g7-sdr.txt", "UID Light", "'0x00' is not a number"),
        ("ipmitool-hp-dl380g7-sdr.txt", "temp 1", "no IPMI sensor named 'temp 1'"),
        ("ipmitool-hp-dl380g7-sdr.txt", "Temp", "no IPMI sensor named 'Temp'"),
    ],
)
def test_ipmitool_errors(name: str, sensor: str, words: str) -> None:
    assert words in error(parse_ipmitool_sdr, fixture(name), sensor)


def test_ipmitool_ignores_banners() -> None:
    text = "IANA PEN registry open failed: No such file or directory\n"
    text += "MB_Inlet_TEMP    | 21 degrees C      | ok\n"
    assert parse_ipmitool_sdr(text, "MB_Inlet_TEMP") == 21.0
    assert "no IPMI sensor" in error(parse_ipmitool_sdr, "", "x")


# ---- sysfs values ----------------------------------------------------------------------


def test_sysfs_values() -> None:
    assert millidegrees("45000\n") == 45.0
    assert millidegrees("-12500") == -12.5
    assert hwmon_value("temp1_input", "27800\n") == 27.8
    assert hwmon_value("in0_input", "1016") == 1.016
    assert hwmon_value("power1_input", "12500000") == 12.5
    assert hwmon_value("fan1_input", "1278\n") == 1278.0
    assert hwmon_value("temp1_max", "80000") == 80000.0  # only *_input is scaled
    assert number_as_bool(hwmon_value("intrusion0_alarm", "1\n")) is True
    for bad in ("", "45.0", "0x10", "N/A", "9" * 40):
        assert "is not an integer" in error(millidegrees, bad)
    assert "not a bool" in error(number_as_bool, 2.0)


# ---- no input raises anything but SensorReadError -------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=12,
)
_words = st.sampled_from(["c", "f", "temp1_input", "", "*", "[", "Temp", "Temp@0Fh", "a.b", "."])
_kinds = st.sampled_from(["number", "bool"])


def _only_sensor_errors(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except SensorReadError as e:
        assert "\n" not in str(e)


@settings(max_examples=400, deadline=None)
@given(st.text(), _words, _words, st.none() | _words, _kinds)
def test_fuzz_text(text: str, a: str, b: str, c: str | None, kind: Any) -> None:
    _only_sensor_errors(parse_number, text)
    _only_sensor_errors(parse_bool, text)
    _only_sensor_errors(parse_value, text, kind)
    _only_sensor_errors(parse_lm_sensors, text, a, b, c)
    _only_sensor_errors(parse_ipmitool_sdr, text, a)
    _only_sensor_errors(millidegrees, text)
    _only_sensor_errors(hwmon_value, a, text)


@settings(max_examples=400, deadline=None)
@given(st.binary(), st.none() | _words, _kinds)
def test_fuzz_payload_bytes(payload: bytes, field: str | None, kind: Any) -> None:
    _only_sensor_errors(parse_payload, payload, field, kind)


@settings(max_examples=400, deadline=None)
@given(_json, st.none() | _words, _kinds, _words, _words)
def test_fuzz_json(doc: Any, field: str | None, kind: Any, a: str, b: str) -> None:
    text = json.dumps(doc)  # NaN/Infinity included: json.dumps writes them
    _only_sensor_errors(parse_payload, text.encode(), field, kind)
    _only_sensor_errors(parse_lm_sensors, text, a, b, None)
    _only_sensor_errors(parse_lm_sensors, json.dumps({"c": {"f": doc}}), "c", "f", None)
