"""Templates: typed single expressions, the filters, missing paths named, the sandbox holding."""

from __future__ import annotations

import pytest

from gu1sync.core.templates import ENV, Template, TemplateError, compile_value, render_value

CTX = {
    "event": "kyc.validation_approved",
    "occurred_at": "2025-01-15T11:00:00.000Z",
    "payload": {
        "status": "approved",
        "amount": 12500.5,
        "count": 3,
        "active": True,
        "nothing": None,
        "warnings": ["Face match low", "Doc expired"],
        "decision": {"checks": [{"status": "pass"}]},
        "changes": {"attributes.email": {"new": "b@x"}},
        "unix": 1736938800,
    },
    "entity": {"name": "María López", "externalId": "customer_1"},
}


def render(source: str):
    return Template(source).render(CTX)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ payload.amount }}", 12500.5),
        ("{{ payload.count }}", 3),
        ("{{ payload.active }}", True),
        ("{{payload.active}}", True),
        ("  {{- payload.active -}}  ", True),
        ("{{ payload.nothing }}", None),
        ("{{ payload.warnings }}", ["Face match low", "Doc expired"]),
        ("{{ payload.decision }}", {"checks": [{"status": "pass"}]}),
        ("{{ payload.count > 2 }}", True),
        ("{{ payload.count * 2 }}", 6),
        ("{{ 'High' if payload.amount > 10000 else 'Low' }}", "High"),
        ("{{ payload.count }} items", "3 items"),
        ("{{ payload.active }}{{ payload.count }}", "True3"),
        ("KYC {{ payload.status }} for {{ entity.name }}", "KYC approved for María López"),
        ("no template at all", "no template at all"),
    ],
)
def test_a_single_expression_keeps_its_type(source, expected):
    value = render(source)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ entity.name | upper }}", "MARÍA LÓPEZ"),
        ("{{ entity.name | lower }}", "maría lópez"),
        ("{{ payload.warnings | join('; ') }}", "Face match low; Doc expired"),
        ("{{ payload.absent | default('none') }}", "none"),
        ("{{ payload.absent.deeper | default('none') }}", "none"),
        ("{{ payload.status | default('none') }}", "approved"),
        ("{{ 'abcdefghijklmnopqrstuvwxyz' | truncate(10, True, '…', 0) }}", "abcdefghi…"),
        ("{{ payload.decision | tojson }}", '{"checks": [{"status": "pass"}]}'),
        ("{{ occurred_at | date('%d/%m/%Y %H:%M') }}", "15/01/2025 11:00"),
        ("{{ occurred_at | date }}", "2025-01-15 11:00 UTC"),
        ("{{ payload.unix | date('%Y-%m-%d') }}", "2025-01-15"),
        ('{{ payload.changes["attributes.email"].new }}', "b@x"),
        ("{{ payload.decision.checks[0].status }}", "pass"),
        ("{{ '<!channel> & <http://x|y>' | slack }}", "&lt;!channel&gt; &amp; &lt;http://x|y&gt;"),
    ],
)
def test_filters(source, expected):
    assert render(source) == expected


def test_only_the_small_set_of_filters_exists():
    assert sorted(ENV.filters) == [
        "d",
        "date",
        "default",
        "join",
        "lower",
        "safe",
        "slack",
        "tojson",
        "truncate",
        "upper",
    ]
    with pytest.raises(ValueError, match="unknown filter 'map'"):
        Template("{{ payload.warnings | map('upper') }}")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ entity.missing }}", "'entity.missing' is not in the event"),
        ("{{ payload.decision.checks[0].reason }}", "'payload.decision.checks[0].reason' is not in the event"),
        ("{{ payload.decision.checks[4] }}", "'payload.decision.checks[4]' is not in the event"),
        ("Hello {{ entity.nickname }}", "'entity.nickname' is not in the event"),
        ("{{ payload.absent.deeper }}", "'payload.absent' is not in the event"),
        ("{{ payload.absent | upper }}", "'payload.absent' is not in the event"),
        ("{{ occurred_at | date('%Y') }} {{ payload.status | date }}", "date: 'approved' is not a timestamp"),
    ],
)
def test_a_missing_path_is_named(source, message):
    with pytest.raises(TemplateError) as err:
        render(source)
    assert str(err.value) == message


def test_render_value_names_the_key_and_keeps_other_types():
    compiled = compile_value({"fields": {"A": "{{ payload.count }}", "B": ["x", "{{ entity.nope }}"]}, "n": 5})
    with pytest.raises(TemplateError) as err:
        render_value(compiled, CTX)
    assert str(err.value) == "fields.B[1]: 'entity.nope' is not in the event"
    assert render_value(compile_value({"a": "{{ payload.count }}", "b": 5, "c": False}), CTX) == {
        "a": 3,
        "b": 5,
        "c": False,
    }


# -- the sandbox --------------------------------------------------------------------------------------

REFUSED_AT_LOAD = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ payload.__class__ }}",
    "{{ payload['__class__'] }}",
    "{{ entity.name.__doc__ }}",
    "{{ ''.format.__globals__ }}",
    "{{ (1).__class__.__base__ }}",
    "{{ payload | attr('__class__') }}",
    "{% for c in ''.__class__.__mro__ %}{{ c }}{% endfor %}",
    "{{ entity.name.__len__() }}",
]


@pytest.mark.parametrize("source", REFUSED_AT_LOAD)
def test_sandbox_escapes_are_refused_when_the_config_loads(source):
    with pytest.raises(ValueError, match="off limits|unknown filter"):
        Template(source)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ cycler }}", "unknown name 'cycler'"),
        ("{{ lipsum() }}", "unknown name 'lipsum'"),
        ("{{ range(10) }}", "unknown name 'range'"),
        ("{{ config }}", "unknown name 'config'"),
        ("{{ request.environ }}", "unknown name 'request'"),
        ("{{ self }}", "templates cannot use 'self'"),
        ("{{ paylod.status }}", "unknown name 'paylod' (did you mean \"payload\"?)"),
    ],
)
def test_names_other_than_the_events_are_refused_at_load(source, message):
    with pytest.raises(ValueError) as err:
        Template(source)
    assert message in str(err.value)


def test_loop_and_set_variables_are_fine():
    template = "{% for w in payload.warnings %}{% set n = loop.index %}{{ n }}:{{ w }} {% endfor %}"
    assert render(template) == "1:Face match low 2:Doc expired "


REFUSED_AT_RUN = [
    ("{{ payload.warnings.append('x') }}", "refused by the sandbox"),
    ("{{ payload.decision.update({}) }}", "refused by the sandbox"),
    ("{{ payload.warnings.pop() }}", "refused by the sandbox"),
    ("{{ 'a' * 1000000 }}", "refused by the sandbox: the result would be too large"),
    ("{{ payload.warnings * 100000 }}", "refused by the sandbox: the result would be too large"),
    ("{{ 10 ** 1000000 }}", "refused by the sandbox: exponent too large"),
    ("{{ '{0.__class__}'.format(payload) }}", "refused by the sandbox"),
]


@pytest.mark.parametrize(("source", "message"), REFUSED_AT_RUN)
def test_sandbox_refuses_at_run_time(source, message):
    try:
        template = Template(source)
    except ValueError:
        return  # refused even earlier
    with pytest.raises(TemplateError) as err:
        value = template.render(CTX)
        pytest.fail(f"rendered {value!r}")  # pragma: no cover - only reached if the sandbox failed
    if message:
        assert message in str(err.value)


def test_the_payload_is_never_changed_by_rendering():
    before = repr(CTX)
    for source, _ in REFUSED_AT_RUN:
        try:
            Template(source).render(CTX)
        except (TemplateError, ValueError):
            pass
    assert repr(CTX) == before


@pytest.mark.parametrize("depth", [90, 400, 3000])
def test_brackets_nested_past_the_stack_are_a_config_error_not_a_traceback(depth):
    # Jinja's parser recurses once per bracket; the long hostile run found 80 were enough for a traceback.
    with pytest.raises(ValueError, match="nested too deeply|template error"):
        Template("{{ " + "(" * depth + "1" + ")" * depth + " }}")
    with pytest.raises(ValueError, match="nested too deeply|template error"):
        Template("{{ " + "[" * depth + "]" * depth + " }}")


def test_syntax_errors_are_reported_at_load():
    with pytest.raises(ValueError, match="template error on its line 1: unexpected end of template"):
        Template("{{ entity.name ")
    with pytest.raises(ValueError, match="template error on its line 2"):
        Template("ok\n{% if %}")


# -- typed values, nulls, and limits -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ -payload.amount }}", -12500.5),
        ("{{ -1 }}", -1),
        ("{{ payload.count }}{# the count #}", 3),
        ("{# note #} {{ payload.active }} ", True),
        ("{{ payload.nothing }}", None),  # a single expression keeps null
        ("was {{ payload.nothing }}.", "was ."),  # in text, null is nothing, not the word None
        ("{{ payload.nothing | default('none', true) }}", "none"),
        ("{{ 7 % 3 }}", 1),
    ],
)
def test_typed_values_and_nulls(source, expected):
    value = render(source)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ (((9**100)**100)**100)**100 > 1 }}", "the result would be too large"),
        ("{{ ('%0300000000d' % 1)[:1] }}", "text formatting with % is not available"),
        ("{{ (['x' * 99999] * 99999) | join }}", "the result would be too large"),
        ("{{ entity.name | truncate(2) }}", "AssertionError"),
        ("{{ payload.huge | date }}", "OSError"),
    ],
)
def test_what_a_template_cannot_do_fails_the_action_cleanly(source, message):
    with pytest.raises(TemplateError) as err:
        Template(source).render({**CTX, "payload": {**CTX["payload"], "huge": 1e18}})
    assert message in str(err.value)


def test_truncate_never_goes_over_its_length():
    text = Template("{{ payload.text | truncate(255) }}").render({"payload": {"text": "word " * 100}})
    assert len(text) <= 255
