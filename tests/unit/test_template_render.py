"""Template rendering: the examples, the sandbox, StrictUndefined and error messages.

Rendering goes through TemplateActuator.apply with no reload, into tmp_path.
"""

from __future__ import annotations

import ast
import copy
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from trunkguard.act.base import ActuatorError
from trunkguard.act.template import TemplateActuator, TemplateSpec, check_template

EXAMPLES = Path(__file__).resolve().parents[2] / "configs" / "templates"


def readme_context() -> dict[str, Any]:
    """The context documented in configs/templates/README.md, read from the page itself
    so that the page and the examples cannot drift apart."""
    text = (EXAMPLES / "README.md").read_text()
    block = re.search(r"## What a template sees\n\n```python\n(.*?)```", text, re.S)
    assert block is not None
    context = ast.literal_eval(block.group(1))
    assert isinstance(context, dict)
    return context


def without_credentials(context: dict[str, Any]) -> dict[str, Any]:
    context = copy.deepcopy(context)
    for route in context["routes"].values():
        route["vars"].pop("username")
        route["vars"].pop("password")
    return context


async def render(tmp_path: Path, template: Path | str, context: Mapping[str, Any]) -> str:
    if isinstance(template, str):
        path = tmp_path / "t.j2"
        path.write_text(template)
        template = path
    out = tmp_path / "out"
    act = TemplateActuator("tpl", TemplateSpec(str(template), str(out)), lambda _: context)
    await act.apply({})
    return out.read_text()


async def render_error(tmp_path: Path, source: str, context: Mapping[str, Any]) -> str:
    with pytest.raises(ActuatorError) as err:
        await render(tmp_path, source, context)
    assert err.value.reason == "render"
    assert "\n" not in err.value.message
    assert not (tmp_path / "out").exists()
    return err.value.message


CONTEXT = {"routes": {"g": {"path": "A", "vars": {"x": "1"}, "remote": False}}}


# -- the examples ---------------------------------------------------------------


def test_examples_compile() -> None:
    names = sorted(p.name for p in EXAMPLES.glob("*.j2"))
    assert names == ["extensions_trunkguard.conf.j2", "gateway.xml.j2", "pjsip_trunks.conf.j2"]
    for name in names:
        assert check_template(str(EXAMPLES / name)) is None


async def test_pjsip_example(tmp_path: Path) -> None:
    ctx = readme_context()
    ctx["routes"]["outbound"]["vars"]["password"] = "se;cret"
    text = await render(tmp_path, EXAMPLES / "pjsip_trunks.conf.j2", ctx)
    assert '; Route group "outbound": path carrier-b\n' in text
    assert "\n[carrier-b]\ntype=endpoint\n" in text
    assert "\ncontact=sip:198.51.100.1:5060\n" in text
    assert "\noutbound_auth=carrier-b-auth\n" in text
    assert "\n[carrier-b-reg]\ntype=registration\n" in text
    assert "\nclient_uri=sip:pbx-bj1@198.51.100.1\n" in text
    assert "\npassword=se\\;cret\n" in text  # ';' would start an Asterisk comment
    assert "\n\n\n" not in text and text.endswith("retry_interval=30\n")

    text = await render(tmp_path, EXAMPLES / "pjsip_trunks.conf.j2", without_credentials(ctx))
    assert "outbound_auth" not in text and "type=auth" not in text
    assert "type=registration" not in text
    assert "\n\n\n" not in text and text.endswith("contact=sip:198.51.100.1:5060\n")


async def test_pjsip_example_marks_an_evacuation(tmp_path: Path) -> None:
    ctx = readme_context()
    ctx["routes"]["outbound"]["remote"] = True
    text = await render(tmp_path, EXAMPLES / "pjsip_trunks.conf.j2", ctx)
    assert "path carrier-b (evacuated: via the other site)\n" in text


async def test_dialplan_example(tmp_path: Path) -> None:
    text = await render(tmp_path, EXAMPLES / "extensions_trunkguard.conf.j2", readme_context())
    assert "\n[trunkguard-outbound]\n" in text
    assert "\n same => n,Dial(PJSIP/${EXTEN}@carrier-b,120)\n" in text
    assert "(sbc2 (bj1)" not in text and "on sbc2 (bj1)" in text


async def test_freeswitch_example_is_xml_with_escaped_values(tmp_path: Path) -> None:
    ctx = readme_context()
    ctx["routes"]["outbound"]["vars"]["password"] = 'a&b"<c>'
    text = await render(tmp_path, EXAMPLES / "gateway.xml.j2", ctx)
    gateway = ET.fromstring(text).find("gateway")
    assert gateway is not None and gateway.get("name") == "carrier-b"
    params = {p.get("name"): p.get("value") for p in gateway.findall("param")}
    assert params == {
        "proxy": "198.51.100.1:5060",
        "realm": "198.51.100.1",
        "username": "pbx-bj1",
        "password": 'a&b"<c>',
        "register": "true",
    }

    text = await render(tmp_path, EXAMPLES / "gateway.xml.j2", without_credentials(ctx))
    gateway = ET.fromstring(text).find("gateway")
    assert gateway is not None
    params = {p.get("name"): p.get("value") for p in gateway.findall("param")}
    assert params["register"] == "false" and "username" not in params


@pytest.mark.parametrize("name", ["pjsip_trunks.conf.j2", "gateway.xml.j2"])
async def test_examples_refuse_a_missing_var(tmp_path: Path, name: str) -> None:
    ctx = readme_context()
    del ctx["routes"]["outbound"]["vars"]["gateway_port"]
    with pytest.raises(ActuatorError) as err:
        await render(tmp_path, EXAMPLES / name, ctx)
    assert err.value.reason == "render" and "gateway_port" in err.value.message


async def test_an_undecided_group_leaves_the_examples_unrendered(tmp_path: Path) -> None:
    ctx = {**readme_context(), "routes": {}}
    with pytest.raises(ActuatorError) as err:
        await render(tmp_path, EXAMPLES / "extensions_trunkguard.conf.j2", ctx)
    # Reported where the undefined value is first used, not where it is assigned.
    assert "extensions_trunkguard.conf.j2:6: 'dict object' has no attribute 'outbound'" in str(
        err.value
    )


# -- rendering rules ------------------------------------------------------------


async def test_renders_verbatim_with_trailing_newline(tmp_path: Path) -> None:
    source = '{{ routes.g.path }} <&> "{{ routes.g.vars.x }}"\n\n'
    assert await render(tmp_path, source, CONTEXT) == 'A <&> "1"\n\n'


async def test_strict_undefined_names_the_line(tmp_path: Path) -> None:
    message = await render_error(tmp_path, "ok\n{{ routes.g.vars.y }}\n", CONTEXT)
    assert message == f"tpl: {tmp_path}/t.j2:2: 'dict object' has no attribute 'y'"


async def test_undefined_top_level_variable(tmp_path: Path) -> None:
    message = await render_error(tmp_path, "{{ sitee }}", CONTEXT)
    assert message.endswith("t.j2:1: 'sitee' is undefined")


async def test_error_inside_a_macro_names_the_macro_line(tmp_path: Path) -> None:
    source = "{% macro m() %}\n\n{{ nope }}\n{% endmacro %}\n{{ m() }}\n"
    assert (await render_error(tmp_path, source, CONTEXT)).endswith("t.j2:3: 'nope' is undefined")


async def test_python_errors_are_render_errors(tmp_path: Path) -> None:
    message = await render_error(tmp_path, "a\nb\n{{ 1 // (routes|length - 1) }}", CONTEXT)
    assert message.endswith("t.j2:3: ZeroDivisionError: integer division or modulo by zero")


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ routes.__class__ }}",
        "{{ routes.g.vars.update({'x': '2'}) }}",
        "{% set l = [] %}{{ l.append(1) }}",
        "{{ routes.g.vars.pop('x') }}",
        "{{ cycler.__init__.__globals__ }}",
    ],
)
async def test_sandbox_refuses_internals_and_mutation(tmp_path: Path, source: str) -> None:
    ctx = copy.deepcopy(CONTEXT)
    message = await render_error(tmp_path, "\n" + source, ctx)
    assert "t.j2:2: " in message and "unsafe" in message
    assert ctx == CONTEXT  # the daemon's data is untouched


async def test_sandbox_refuses_include(tmp_path: Path) -> None:
    (tmp_path / "other.j2").write_text("secret")
    message = await render_error(tmp_path, '{% include "other.j2" %}', CONTEXT)
    assert "t.j2:1: TypeError: no loader for this environment specified" in message


async def test_reads_only_methods_are_allowed(tmp_path: Path) -> None:
    source = "{% for g, r in routes.items() | sort %}{{ g }}={{ r.vars.get('x') }}{% endfor %}"
    assert await render(tmp_path, source, CONTEXT) == "g=1"


async def test_long_errors_are_clipped_to_one_line(tmp_path: Path) -> None:
    name = "x" * 1000
    message = await render_error(tmp_path, "{{ " + name + " }}", CONTEXT)
    assert len(message) < 400 and message.endswith("...")


async def test_template_is_reread_on_every_apply(tmp_path: Path) -> None:
    template, out = tmp_path / "t.j2", tmp_path / "out"
    template.write_text("one {{ routes.g.path }}\n")
    act = TemplateActuator("tpl", TemplateSpec(str(template), str(out)), lambda _: CONTEXT)
    assert await act.apply({}) is True
    assert out.read_text() == "one A\n"
    assert await act.verify({}) and await act.apply({}) is False
    template.write_text("two {{ routes.g.path }}\n")
    assert not await act.verify({})
    assert await act.apply({}) is True
    assert out.read_text() == "two A\n"


async def test_context_gets_the_desired_state(tmp_path: Path) -> None:
    seen: list[dict[str, str]] = []

    def context(desired: Mapping[str, str]) -> Mapping[str, Any]:
        seen.append(dict(desired))
        return {"routes": {g: {"path": p} for g, p in desired.items()}}

    template, out = tmp_path / "t.j2", tmp_path / "out"
    template.write_text("{{ routes.outbound.path }}")
    act = TemplateActuator("tpl", TemplateSpec(str(template), str(out)), context)
    await act.apply({"outbound": "carrier-b"})
    assert out.read_text() == "carrier-b" and seen == [{"outbound": "carrier-b"}]


async def test_missing_template_is_a_render_error(tmp_path: Path) -> None:
    act = TemplateActuator(
        "tpl", TemplateSpec(str(tmp_path / "nope.j2"), str(tmp_path / "out")), lambda _: {}
    )
    with pytest.raises(ActuatorError) as err:
        await act.apply({})
    assert err.value.reason == "render"
    assert err.value.message == f"tpl: {tmp_path}/nope.j2: cannot read: No such file or directory"


# -- check_template -------------------------------------------------------------


def test_check_template_gives_the_line_of_a_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.j2"
    path.write_text("line 1\n{% if routes %}\nline 3\n{% endfor %}\n")
    assert check_template(str(path)) == (
        f"{path}:4: Encountered unknown tag 'endfor'. Jinja was looking for the following "
        "tags: 'elif' or 'else' or 'endif'. The innermost block that needs to be closed is 'if'."
    )


def test_check_template_unknown_filter(tmp_path: Path) -> None:
    path = tmp_path / "bad.j2"
    path.write_text("\n\n{{ routes | nosuchfilter }}\n")
    assert check_template(str(path)) == f"{path}:3: No filter named 'nosuchfilter'."


def test_check_template_unreadable(tmp_path: Path) -> None:
    assert check_template(str(tmp_path / "nope.j2")) == (
        f"{tmp_path}/nope.j2: cannot read: No such file or directory"
    )
    (tmp_path / "latin1.j2").write_bytes(b"caf\xe9\n")
    assert check_template(str(tmp_path / "latin1.j2")) == (
        f"{tmp_path}/latin1.j2: not UTF-8: invalid continuation byte"
    )


def test_check_template_accepts_undefined_names(tmp_path: Path) -> None:
    # Variables are known only when rendering: the daemon reports them then.
    path = tmp_path / "ok.j2"
    path.write_text("{{ whatever.you.like }}\n")
    assert check_template(str(path)) is None


# -- the spec -------------------------------------------------------------------


def test_spec_takes_lists_and_checks_values() -> None:
    argv = ["/usr/sbin/asterisk", "-rx", "dialplan reload"]  # a list, as from YAML
    spec = TemplateSpec("t", "o", reload=argv)  # type: ignore[arg-type]
    assert spec.reload == ("/usr/sbin/asterisk", "-rx", "dialplan reload")
    hash(spec)
    for bad in (
        {"reload": ("asterisk", "-rx", "dialplan reload")},
        {"reload": ()},
        {"timeout": 0.0},
        {"mode": 0o10000},
        {"mode": -1},
    ):
        with pytest.raises(ValueError):
            TemplateSpec("t", "o", **bad)
    with pytest.raises(ValueError):
        TemplateSpec("t", "")
