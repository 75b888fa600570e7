"""check-config under hostile input: a mutated example config is either valid or refused
with one line per problem naming its key path (and line); never a traceback, never a
hang. YAML alias bombs and self-containing aliases are refused at once."""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trunkguard.config import ConfigError, parse_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load((ROOT / "configs/example.yaml").read_text())

# Values a careless edit or a hostile file puts where a config value belongs.
junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "-1s", "0ms", "1e309s", "10 parsecs", "trunk:", "link:nope", "∞"]),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


def paths(node: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [here]
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths(v, (*here, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths(v, (*here, i))
    return out


ALL = [p for p in paths(EXAMPLE) if p]


def mutate(data: Any, path: tuple[Any, ...], how: str, value: Any) -> Any:
    data = copy.deepcopy(data)
    parent = data
    for k in path[:-1]:
        parent = parent[k]
    last = path[-1]
    if how == "set":
        parent[last] = value
    elif how == "delete":
        del parent[last]
    elif how == "unknown" and isinstance(parent, dict):
        parent[f"{last}_typo"] = value
    elif how == "rename" and isinstance(parent, dict):
        parent[f"ünï-{last}"] = parent.pop(last)
    elif how == "duplicate" and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[last]))
    return data


def check(text: str) -> None:
    try:
        parse_config(text, "fuzz.yaml")
    except ConfigError as e:
        assert e.problems
        for p in e.problems:
            assert "\n" not in p and "Traceback" not in p, p
            # The file itself (syntax, shape) or a key path with its line (a key that is
            # missing has none).
            where = p.startswith("fuzz.yaml: ") or p.endswith(": missing required key")
            assert where or (": " in p and "(line " in p), p


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=st.sampled_from(ALL),
    how=st.sampled_from(["set", "delete", "unknown", "rename", "duplicate"]),
    value=junk,
)
def test_a_mutated_example_is_valid_or_refused_in_one_line_each(
    path: tuple[Any, ...], how: str, value: Any
) -> None:
    check(yaml.safe_dump(mutate(EXAMPLE, path, how, value), allow_unicode=True))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_valid_or_refused_in_one_line_each(text: str) -> None:
    check(text)


def laughs(levels: int) -> str:
    lines = ["l0: &l0 [ha, ha, ha, ha, ha, ha, ha, ha, ha, ha]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\nsite: x\nnode: y\n"


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (laughs(9), "more than 1,000,000 values once aliases are expanded"),
        ("site: &s [*s]\nnode: y\n", "an alias contains itself"),
        ("site: x\nnode: " + "[" * 10000 + "]" * 10000 + "\n", "nest"),
    ],
)
def test_yaml_bombs_are_refused_quickly(text: str, want: str) -> None:
    start = time.monotonic()
    with pytest.raises(ConfigError) as e:
        parse_config(text, "bomb.yaml")
    assert time.monotonic() - start < 1.0
    assert len(e.value.problems) == 1 and want in e.value.problems[0], e.value.problems


def test_check_config_and_run_refuse_bad_files_in_one_line(tmp_path: Path) -> None:
    cases = {
        "bomb.yaml": laughs(9),
        "types.yaml": yaml.safe_dump(mutate(EXAMPLE, ("probe", "interval"), "set", -5)),
        "binary.yaml": "site: \x00\x01\n",
    }
    for name, text in cases.items():
        f = tmp_path / name
        f.write_text(text)
        for cmd in (["check-config", "-c", str(f)], ["run", "-c", str(f)]):
            r = subprocess.run(
                [sys.executable, "-m", "trunkguard", *cmd],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert r.returncode == 1, (name, cmd, r.stderr)
            assert "Traceback" not in r.stderr and r.stdout == "", (name, r.stderr)
            assert r.stderr.strip() and all(line.strip() for line in r.stderr.splitlines())
