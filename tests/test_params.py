"""Param: one key's declaration checks values, names the rule in words, fills defaults and becomes
the JSON schema the workflow validates with."""

import pytest

from augdefense.errors import ConfigError
from augdefense.params import OPTIONAL, Param, complete, object_schema

NESTED = {
    "mode": Param("string", enum=("a", "b")),
    "share": Param("number", default=0.5, exclusive_minimum=0, exclusive_maximum=1),
}
FIELDS = {
    "k": Param("integer", "width", default=2, minimum=1),
    "p": Param("number", default=0.5, minimum=0, maximum=1),
    "name": Param("string", default=OPTIONAL),
    "steps": Param("array", default=[1], items=Param("integer", minimum=1)),
    "choice": Param(any_of=(Param("integer", minimum=1), Param(enum=("auto",))), default="auto"),
    "inner": Param(ref="defense", default={"type": "none"}),
    "fixed": Param(const=False, default=False),
    "nested": Param("object", default=OPTIONAL, fields=NESTED),
}


@pytest.mark.parametrize(
    "param, rule",
    [
        (Param("integer", minimum=1), "an integer >= 1"),
        (Param("number", exclusive_minimum=0, maximum=1), "a number > 0 and <= 1"),
        (Param("number", exclusive_minimum=0, exclusive_maximum=1), "a number > 0 and < 1"),
        (Param("number", minimum=0.5, maximum=2.5), "a number >= 0.5 and <= 2.5"),
        (Param("boolean"), "true or false"),
        (Param("string"), "a string"),
        (Param(), "a value"),
        (Param(enum=("a", "b")), "one of 'a', 'b'"),
        (Param(const=False), "False"),
        (Param(any_of=(Param("integer", minimum=1), Param(enum=("auto",)))), "an integer >= 1 or one of 'auto'"),
        (Param(ref="defense"), "a defense entry (a mapping with a 'type')"),
        (Param("array", items=Param("integer", minimum=1)), "a list of an integer >= 1"),
        (Param("object", fields=NESTED), "a mapping with keys ['mode', 'share']"),
    ],
)
def test_the_rule_in_words(param, rule):
    assert param.rule() == rule


@pytest.mark.parametrize(
    "value, ok",
    [
        (1, True),
        (0, False),
        (True, False),
        (1.0, False),
        ("1", False),
        (None, False),
    ],
)
def test_integers_refuse_booleans_floats_and_strings(value, ok):
    assert Param("integer", minimum=1).accepts(value) is ok


@pytest.mark.parametrize(
    "param, value, ok",
    [
        (Param("number", exclusive_maximum=1), 1, False),
        (Param("number", exclusive_maximum=1), 0.999, True),
        (Param("number", exclusive_minimum=0), 0, False),
        (Param("number", maximum=1), 1, True),
        (Param("number", maximum=1), 1.01, False),
        (Param("number", minimum=0), -0.01, False),
        (Param("number"), True, False),
        (Param("boolean"), True, True),
        (Param("boolean"), 1, False),
        (Param(enum=("a",)), "a", True),
        (Param(enum=(1,)), True, False),
        (Param(const=False), False, True),
        (Param(const=False), 0, False),
        (Param(const=False), True, False),
        (Param(any_of=(Param("integer", minimum=1), Param(enum=("auto",)))), "auto", True),
        (Param(any_of=(Param("integer", minimum=1), Param(enum=("auto",)))), 0, False),
        (Param(ref="defense"), {"type": "x"}, True),
        (Param(ref="defense"), {"k": 1}, False),
        (Param(ref="defense"), ["type"], False),
        (Param("array", items=Param("integer", minimum=1)), [1, 2], True),
        (Param("array", items=Param("integer", minimum=1)), [1, 0], False),
        (Param("object", fields=NESTED), {"mode": "a"}, True),
        (Param("object", fields=NESTED), {"mode": "c"}, False),
        (Param("object", fields=NESTED), {"mode": "a", "other": 1}, False),
    ],
)
def test_accepts(param, value, ok):
    assert param.accepts(value) is ok


def test_complete_fills_defaults_keeps_optional_keys_absent_and_completes_nested_entries():
    spec = complete({"k": 3, "nested": {"mode": "b"}}, FIELDS, "x")
    assert spec == {
        "k": 3,
        "p": 0.5,
        "steps": [1],
        "choice": "auto",
        "inner": {"type": "none"},
        "fixed": False,
        "nested": {"mode": "b", "share": 0.5},
    }
    assert "name" not in spec
    again = complete({}, FIELDS, "x")
    again["steps"].append(5)
    assert complete({}, FIELDS, "x")["steps"] == [1]  # defaults are copied, never shared


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"k": 0}, r"^x\.k: 0 is invalid; must be an integer >= 1$"),
        ({"nested": {"mode": "c"}}, r"^x\.nested: \{'mode': 'c'\} is invalid; must be a mapping with keys"),
        ({"nested": {}}, r"^x\.nested: \{\} is invalid"),
        ({"q": 1, "type": "t"}, r"^x: unknown key\(s\) \['q'\] for type 't'; allowed: \["),
        ({"q": 1}, r"^x: unknown key\(s\) \['q'\]; allowed: \['choice', 'fixed'"),
    ],
)
def test_complete_names_the_key_at_fault(spec, message):
    with pytest.raises(ConfigError, match=message):
        complete(spec, FIELDS, "x", allowed=("type",))


def test_required_keys_and_non_mappings_are_named():
    with pytest.raises(ConfigError, match=r"^x\.mode: required \(one of 'a', 'b'\)$"):
        complete({}, NESTED, "x")
    with pytest.raises(ConfigError, match=r"^x: expected a mapping, found list$"):
        complete([], NESTED, "x")
    with pytest.raises(ConfigError, match=r"^mode: required"):
        complete({}, NESTED, "")
    assert complete({"mode": "a"}, NESTED, "")["share"] == 0.5


def test_schema_of_each_kind_of_param():
    assert Param("integer", "width", default=2, minimum=1).schema() == {
        "type": "integer",
        "minimum": 1,
        "default": 2,
        "description": "width",
    }
    assert Param("number", exclusive_minimum=0, maximum=1, exclusive_maximum=2).schema() == {
        "type": "number",
        "maximum": 1,
        "exclusiveMinimum": 0,
        "exclusiveMaximum": 2,
    }
    assert Param(enum=("a", "b"), default="a").schema() == {"enum": ["a", "b"], "default": "a"}
    assert Param("string", enum=("a",)).schema() == {"enum": ["a"]}
    assert Param(const=False, default=False).schema() == {"const": False, "default": False}
    assert Param(ref="defense").schema() == {"$ref": "#/$defs/defense"}
    assert Param("array", default=(1, 2), items=Param("integer")).schema() == {
        "type": "array",
        "items": {"type": "integer"},
        "default": [1, 2],
    }
    assert Param(any_of=(Param("integer"), Param(enum=("auto",)))).schema() == {
        "oneOf": [{"type": "integer"}, {"enum": ["auto"]}]
    }
    assert Param("string", default=OPTIONAL).schema() == {"type": "string"}


def test_object_schema_is_closed_and_lists_required_keys_first_seen():
    schema = object_schema(NESTED, extra={"type": {}})
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert schema["required"] == ["mode"] and list(schema["properties"]) == ["type", "mode", "share"]
    assert "required" not in object_schema({"a": Param("integer", default=1)})
