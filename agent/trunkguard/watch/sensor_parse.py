"""Pure parsers for sensor readings: program output, MQTT payloads, sysfs values.

No I/O here. Every parser raises SensorReadError with a one-line message naming
what is wrong, and nothing else, whatever the input (they are fuzzed).
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from typing import Any, Literal

Kind = Literal["number", "bool"]

# Case-insensitive words a bool sensor may print or publish. "open"/"closed" are left
# out on purpose: for a dry contact either can be the alarm (NO vs NC wiring), so the
# script or device must say true/false itself.
TRUE_WORDS = frozenset({"1", "true", "yes", "on", "running", "active"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", "stopped", "inactive"})

# A plain decimal number: no "nan", "inf", "1_000" or non-ASCII digits (float() takes all).
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_INTEGER = re.compile(r"-?\d+", re.ASCII)
_QUOTE_MAX = 40
_LIST_MAX = 8

# hwmon sysfs units (Documentation/hwmon/sysfs-interface): value / divisor = SI unit.
_HWMON_DIVISOR = {"temp": 1000, "in": 1000, "curr": 1000, "humidity": 1000, "power": 1e6}


class SensorReadError(Exception):
    """A sensor value could not be read or understood; the message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


def _q(text: str) -> str:
    """Quote untrusted text for a message: short, one line, control characters escaped."""
    return repr(text if len(text) <= _QUOTE_MAX else text[:_QUOTE_MAX] + "...")


def _names(names: list[str]) -> str:
    shown = ", ".join(_q(n) for n in names[:_LIST_MAX])
    return shown + (f" (+{len(names) - _LIST_MAX} more)" if len(names) > _LIST_MAX else "")


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise SensorReadError(f"{what} is not a finite number")
    return value


def _number_word(word: str, what: str) -> float:
    if not _NUMBER.fullmatch(word):
        raise SensorReadError(f"{what} {_q(word)} is not a number")
    return _finite(float(word), what)


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    raise SensorReadError("empty output")


def parse_number(text: str) -> float:
    """A program's output: the first non-empty line is a plain decimal number."""
    return _number_word(_first_line(text), "output")


def parse_bool(text: str) -> bool:
    """A program's output: the first non-empty line is a word of TRUE_WORDS or FALSE_WORDS."""
    return _bool_word(_first_line(text), "output")


def _bool_word(word: str, what: str) -> bool:
    low = word.lower()
    if low in TRUE_WORDS:
        return True
    if low in FALSE_WORDS:
        return False
    raise SensorReadError(f"{what} {_q(word)} is not a bool (true/false, on/off, yes/no, 1/0)")


def number_as_bool(value: float, what: str = "value") -> bool:
    """0 or 1 from a numeric source (an alarm file, a JSON 0/1) as a bool."""
    if value == 0:
        return False
    if value == 1:
        return True
    raise SensorReadError(f"{what} {value:g} is not a bool (0 or 1)")


def parse_value(text: str, kind: Kind) -> float | bool:
    return parse_bool(text) if kind == "bool" else parse_number(text)


def parse_payload(payload: bytes, field: str | None, kind: Kind) -> float | bool:
    """An MQTT message: plain text ("23.5", "ON"), or JSON with `field` a dot path."""
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise SensorReadError("payload is not UTF-8") from None
    if not text:
        raise SensorReadError("empty payload")
    if field is None:
        if text[0] in "{[":
            raise SensorReadError("payload is a JSON object or array: set a field")
        try:
            value: Any = _loads(text)
        except SensorReadError:
            value = text  # not JSON: a plain word
        return _coerce(value, kind, "payload")
    doc = _loads(text)
    for part in field.split("."):
        if not isinstance(doc, dict):
            raise SensorReadError(f"no field {_q(field)}: {_q(part)} is not in an object")
        if part not in doc:
            raise SensorReadError(f"no field {_q(field)} in payload (missing {_q(part)})")
        doc = doc[part]
    return _coerce(doc, kind, f"field {_q(field)}")


def _loads(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise SensorReadError("JSON nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, and int strings past the digit limit
        raise SensorReadError(f"invalid JSON: {e}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _coerce(value: Any, kind: Kind, what: str) -> float | bool:
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float):
            return number_as_bool(_to_float(value, what), what)
        if isinstance(value, str):
            return _bool_word(value.strip(), what)
        raise SensorReadError(f"{what} is a JSON {_json_type(value)}, not a bool")
    if isinstance(value, bool):
        raise SensorReadError(f"{what} is a bool, not a number")
    if isinstance(value, int | float):
        return _to_float(value, what)
    if isinstance(value, str):
        return _number_word(value.strip(), what)
    raise SensorReadError(f"{what} is a JSON {_json_type(value)}, not a number")


def _to_float(value: float, what: str) -> float:
    try:
        return _finite(float(value), what)
    except OverflowError:  # an int too large for a float
        raise SensorReadError(f"{what} is not a finite number") from None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return "object" if isinstance(value, dict) else "array"


# ---- lm-sensors: `sensors -j` -----------------------------------------------------------


class _Obj(list[tuple[str, Any]]):
    """A JSON object as its pairs: `sensors -j` repeats feature names (dell_smm "CPU")."""


_TRAILING_COMMA = re.compile(r",(\s*[}\]])")


def parse_lm_sensors(text: str, chip: str, feature: str, subfeature: str | None) -> float:
    """One value from `sensors -j` output.

    `chip` is an fnmatch pattern that must match exactly one chip; `feature` is the
    feature (label) name; `subfeature` defaults to the one ending in "_input".
    Tolerates what real versions print: "ERROR: ..." lines (stderr merged, 3.4-3.6),
    a trailing comma after "Adapter" in a chip without features (3.6), and one JSON
    document per chip when chips are named on the command line (3.6).
    """
    chips = _lm_documents(text)
    names = [k for k, _ in chips]
    hits = [(k, v) for k, v in chips if fnmatch.fnmatchcase(k, chip)]
    if not hits:
        raise SensorReadError(f"no chip matches {_q(chip)}; chips: {_names(names) or 'none'}")
    if len(hits) > 1:
        raise SensorReadError(f"{len(hits)} chips match {_q(chip)}: {_names([k for k, _ in hits])}")
    name, body = hits[0]
    if not isinstance(body, _Obj):
        raise SensorReadError(f"chip {_q(name)} is not an object")
    feats = [v for k, v in body if k == feature and isinstance(v, _Obj)]
    if not feats:
        have = [k for k, v in body if isinstance(v, _Obj)]
        raise SensorReadError(
            f"chip {_q(name)} has no feature {_q(feature)}; features: {_names(have) or 'none'}"
        )
    if subfeature is None:
        values = [(k, v) for f in feats for k, v in f if k.endswith("_input")]
        want = "an *_input value"
    else:
        values = [(k, v) for f in feats for k, v in f if k == subfeature]
        want = _q(subfeature)
    where = f"{name} / {feature}"
    if not values:
        # lm-sensors leaves out a value it cannot read (and says so on stderr).
        raise SensorReadError(f"{where}: no reading ({want} missing)")
    if len(values) > 1:
        raise SensorReadError(f"{where}: {len(values)} values {_names([k for k, _ in values])}")
    key, value = values[0]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SensorReadError(f"{where}: {key} is not a number")
    return _to_float(value, f"{where}: {key}")


def _lm_documents(text: str) -> list[tuple[str, Any]]:
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("ERROR:")]
    body = _TRAILING_COMMA.sub(r"\1", "\n".join(lines))
    decoder = json.JSONDecoder(object_pairs_hook=_Obj, parse_constant=_no_constant)
    chips: list[tuple[str, Any]] = []
    pos = 0
    while True:
        while pos < len(body) and body[pos].isspace():
            pos += 1
        if pos == len(body):
            break
        try:
            doc, pos = decoder.raw_decode(body, pos)
        except RecursionError:
            raise SensorReadError("sensors output: JSON nested too deeply") from None
        except ValueError as e:
            raise SensorReadError(f"sensors output is not valid JSON: {e}") from None
        if not isinstance(doc, _Obj):
            raise SensorReadError("sensors output is not a JSON object")
        chips.extend(doc)
    if not chips:
        raise SensorReadError("sensors output is empty")
    return chips


# ---- ipmitool: `sdr type Temperature`, `sdr elist`, `sdr list` -------------------------

_NO_READING = frozenset({"no reading", "disabled", "na", ""})
_READING = re.compile(r"([+-]?\d+(?:\.\d+)?)(?:\s+\S.*)?", re.ASCII)


def parse_ipmitool_sdr(text: str, name: str) -> float:
    """The reading of the sensor `name` from ipmitool SDR output.

    Rows are `name | id | status | entity | reading` (sdr type/elist) or
    `name | reading | status` (sdr list). Names repeat on some BMCs (Dell: two CPU
    "Temp"); then `name` may be given as "Temp@0Fh" with the sensor id. The unit is
    not converted: "degrees C" for temperatures, "RPM" for fans.
    """
    table = _sdr_rows(text)
    want, want_id = name.strip(), ""
    rows = [r for r in table if r[0] == want]
    if not rows and "@" in want:
        want, _, want_id = (p.strip() for p in want.rpartition("@"))
        rows = [r for r in table if r[0] == want and r[1].lower() == want_id.lower()]
    if not rows:
        raise SensorReadError(f"no IPMI sensor named {_q(name)}")
    if len(rows) > 1:
        ids = [r[1] for r in rows]
        hint = f"; name one as {_q(want + '@' + ids[-1])}" if all(ids) else ""
        raise SensorReadError(f"{len(rows)} IPMI sensors named {_q(name)}: {_names(ids)}{hint}")
    _, _, status, reading = rows[0]
    if status.lower() == "ns" or reading.lower() in _NO_READING:
        raise SensorReadError(f"IPMI sensor {_q(name)}: no reading ({reading or 'empty'})")
    m = _READING.fullmatch(reading)
    if m is None:
        raise SensorReadError(f"IPMI sensor {_q(name)}: reading {_q(reading)} is not a number")
    return _finite(float(m.group(1)), f"IPMI sensor {_q(name)}")


def _sdr_rows(text: str) -> list[tuple[str, str, str, str]]:
    """(name, id, status, reading) of each row; banners and blank lines are skipped."""
    rows = []
    for line in text.splitlines():
        cols = [c.strip() for c in line.split("|")]
        if len(cols) >= 5:
            rows.append((cols[0], cols[1], cols[2], cols[-1]))
        elif len(cols) == 3:
            rows.append((cols[0], "", cols[2], cols[1]))
    return rows


# ---- sysfs: hwmon and thermal ---------------------------------------------------------


def parse_sysfs_int(text: str, what: str) -> int:
    """A sysfs attribute: one integer and a newline."""
    word = text.strip()
    if not _INTEGER.fullmatch(word) or len(word) > 30:
        raise SensorReadError(f"{what}: {_q(word)} is not an integer")
    return int(word)


def millidegrees(text: str, what: str = "temperature") -> float:
    """A thermal zone's or hwmon temp*_input value: millidegrees Celsius to degrees."""
    return parse_sysfs_int(text, what) / 1000


def hwmon_value(filename: str, text: str) -> float:
    """A hwmon attribute in SI units: temp*_input millidegrees -> degrees C, in* mV -> V, ..."""
    raw = parse_sysfs_int(text, filename)
    prefix = filename.split("_", 1)[0].rstrip("0123456789")
    if filename.endswith("_input") and prefix in _HWMON_DIVISOR:
        return raw / _HWMON_DIVISOR[prefix]
    return float(raw)  # fan*_input (RPM), *_alarm, pwm*: already plain
