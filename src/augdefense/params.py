"""Config keys declared once: type, allowed values, default and meaning of every key.

Each registry class (attack, defense) and each plain section (data, model, recipe, runtime) holds a
table ``key -> Param``. The table validates an entry and fills its defaults in Python (jobs and
library callers), and ``augdefense.schema`` turns the same tables into the JSON schema Snakemake
validates the config with (``workflow/schemas/config.schema.yaml`` is generated from them; a test
fails when the two drift apart). Torch-free.

The checks are written here rather than run through ``jsonschema``: jobs must validate on machines
that have torch but not jsonschema (a bare GPU node), with messages that name the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from augdefense.errors import ConfigError

REQUIRED = object()  # the default of a key an entry must give
OPTIONAL = object()  # the default of a key that may be left out (then absent, not filled in)

_PYTHON_TYPES = {
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "string": (str,),
    "array": (list, tuple),
    "object": (dict,),
}
_ARTICLES = {
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "string": "a string",
    "array": "a list",
    "object": "a mapping",
}


@dataclass(frozen=True)
class Param:
    """One key: ``kind`` is a JSON-schema type name; bounds, ``enum`` or ``const`` restrict the
    value; ``items`` describes a list's elements, ``fields`` a mapping's keys; ``ref`` names a
    registry (``"defense"``) whose entries the value must be; ``any_of`` lists alternatives."""

    kind: str | None = None
    doc: str = ""
    default: Any = REQUIRED
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    enum: tuple | None = None
    const: Any = REQUIRED
    items: Param | None = None
    fields: dict[str, Param] | None = field(default=None, hash=False)
    ref: str | None = None
    any_of: tuple[Param, ...] | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def has_default(self) -> bool:
        return self.default is not REQUIRED and self.default is not OPTIONAL

    # -- Python-side validation ---------------------------------------------------------------------
    def rule(self) -> str:
        """What a valid value is, in words (for error messages)."""
        if self.any_of:
            return " or ".join(p.rule() for p in self.any_of)
        if self.ref:
            return f"a {self.ref} entry (a mapping with a 'type')"
        if self.const is not REQUIRED:
            return repr(self.const)
        if self.enum is not None:
            return "one of " + ", ".join(repr(v) for v in self.enum)
        text = _ARTICLES.get(self.kind, "a value")
        bounds = [
            f">= {_num(self.minimum)}" if self.minimum is not None else None,
            f"> {_num(self.exclusive_minimum)}" if self.exclusive_minimum is not None else None,
            f"<= {_num(self.maximum)}" if self.maximum is not None else None,
            f"< {_num(self.exclusive_maximum)}" if self.exclusive_maximum is not None else None,
        ]
        bounds = [b for b in bounds if b]
        if self.items is not None:
            text += f" of {self.items.rule()}"
        if self.fields is not None:
            text += f" with keys {sorted(self.fields)}"
        return text + (" " + " and ".join(bounds) if bounds else "")

    def accepts(self, value: Any) -> bool:
        if self.any_of:
            return any(p.accepts(value) for p in self.any_of)
        if self.ref:
            return isinstance(value, dict) and "type" in value
        if self.const is not REQUIRED:
            return value == self.const and type(value) is type(self.const)
        if self.enum is not None:
            return value in self.enum and not isinstance(value, bool)
        if self.kind is not None:
            if not isinstance(value, _PYTHON_TYPES[self.kind]):
                return False
            if isinstance(value, bool) and self.kind != "boolean":
                return False
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if self.minimum is not None and value < self.minimum:
                return False
            if self.maximum is not None and value > self.maximum:
                return False
            if self.exclusive_minimum is not None and value <= self.exclusive_minimum:
                return False
            if self.exclusive_maximum is not None and value >= self.exclusive_maximum:
                return False
        if self.items is not None and not all(self.items.accepts(v) for v in value):
            return False
        if self.fields is not None:
            try:
                complete(value, self.fields, "")
            except ConfigError:
                return False
        return True

    # -- JSON schema --------------------------------------------------------------------------------
    def schema(self) -> dict:
        if self.any_of:
            out: dict = {"oneOf": [p.schema() for p in self.any_of]}
        elif self.ref:
            out = {"$ref": f"#/$defs/{self.ref}"}
        elif self.fields is not None:
            out = object_schema(self.fields)
        else:
            out = {}
            if self.kind is not None and self.enum is None and self.const is REQUIRED:
                out["type"] = self.kind
            if self.enum is not None:
                out["enum"] = list(self.enum)
            if self.const is not REQUIRED:
                out["const"] = self.const
            for key, value in (
                ("minimum", self.minimum),
                ("maximum", self.maximum),
                ("exclusiveMinimum", self.exclusive_minimum),
                ("exclusiveMaximum", self.exclusive_maximum),
            ):
                if value is not None:
                    out[key] = value
            if self.items is not None:
                out["items"] = self.items.schema()
        if self.has_default:
            out["default"] = _plain(self.default)
        if self.doc:
            out["description"] = self.doc
        return out


def object_schema(fields: dict[str, Param], extra: dict | None = None) -> dict:
    """A closed JSON-schema object of ``fields`` (plus ``extra`` properties declared elsewhere)."""
    properties = {**(extra or {}), **{k: p.schema() for k, p in fields.items()}}
    out = {"type": "object", "additionalProperties": False}
    required = [k for k, p in fields.items() if p.required]
    if required:
        out["required"] = required
    out["properties"] = properties
    return out


def complete(spec: dict, fields: dict[str, Param], where: str, allowed: tuple[str, ...] = ()) -> dict:
    """``spec`` checked against ``fields`` (plus the keys in ``allowed``, checked elsewhere), with
    every missing default filled in. Raises ConfigError naming the first key at fault."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping, found {type(spec).__name__}")
    unknown = sorted(set(spec) - set(fields) - set(allowed))
    if unknown:
        what = f" for type '{spec['type']}'" if "type" in spec else ""
        raise ConfigError(f"{where}: unknown key(s) {unknown}{what}; allowed: {sorted({*fields, *allowed})}")
    out = dict(spec)
    for key, param in fields.items():
        path = f"{where}.{key}" if where else key
        if key not in out:
            if param.required:
                raise ConfigError(f"{path}: required ({param.rule()})")
            if param.has_default:
                out[key] = _copy(param.default)
            continue
        if not param.accepts(out[key]):
            raise ConfigError(f"{path}: {out[key]!r} is invalid; must be {param.rule()}")
        if param.fields is not None:
            out[key] = complete(out[key], param.fields, path)
        elif param.items is not None and param.items.fields is not None:
            out[key] = [complete(v, param.items.fields, f"{path}[{i}]") for i, v in enumerate(out[key])]
    return out


def _num(value: float) -> str:
    return f"{value:g}"


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_copy(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    """A default as JSON/YAML writes it (tuples as lists)."""
    return _copy(value)
