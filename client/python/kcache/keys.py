# SPDX-License-Identifier: MIT
"""Cache keys and value codecs for the framework helpers (kcache.fastapi).

  * hash_key(): the default key of a cached function: its qualified name and
    a SHA-256 of its arguments sorted by name, canonically JSON-encoded, so
    the same call gives the same key in every process;
  * format_key(): key templates such as "{username}_posts", filled from the
    arguments by name (str.format, so "{user.id}" works too);
  * model_codec() and schema_tag(): a Pydantic model's JSON as the cached
    value, and the SHA-256 of its JSON schema as the schema tag, so that a
    change of the model makes the values cached under the old one misses
    instead of validation errors.

Pydantic 1 (Debian 12's 1.10) is what the tests run. Pydantic 2 paths
(model_json_schema, TypeAdapter) sit behind PYDANTIC_V2 and are untested here.
Pydantic is imported only when a model is used.
"""

import dataclasses
import datetime
import decimal
import enum
import hashlib
import json
import uuid

__all__ = ["hash_key", "format_key", "canonical", "schema_tag", "model_codec", "json_codec",
           "pydantic_version"]


def pydantic_version():
    """(major, minor) of the installed Pydantic, or None."""
    try:
        import pydantic
    except ImportError:
        return None
    parts = str(getattr(pydantic, "VERSION", getattr(pydantic, "__version__", "0"))).split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return None


def _is_pydantic_model(x):
    try:
        import pydantic
    except ImportError:
        return False
    return isinstance(x, pydantic.BaseModel)


def canonical(v):
    """v as plain JSON data, the same in every process: mappings sorted by
    key, sets sorted, models as their fields, dates and UUIDs as strings."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return repr(v)  # exact and stable, unlike json's float formatting across versions
    if isinstance(v, (bytes, bytearray, memoryview)):
        return {"$bytes": bytes(v).hex()}
    if isinstance(v, enum.Enum):
        return canonical(v.value)
    if isinstance(v, dict):
        return {str(k): canonical(x) for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))}
    if isinstance(v, (list, tuple)):
        return [canonical(x) for x in v]
    if isinstance(v, (set, frozenset)):
        return sorted((canonical(x) for x in v), key=lambda x: json.dumps(x, sort_keys=True))
    if isinstance(v, (datetime.date, datetime.time, uuid.UUID, decimal.Decimal)):
        return str(v)
    if _is_pydantic_model(v):
        dump = getattr(v, "model_dump", None)  # pydantic 2
        return canonical(dump(mode="json") if dump is not None else v.dict())
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return canonical(dataclasses.asdict(v))
    return str(v)


def hash_key(name, arguments):
    """name + ":" + SHA-256 (hex) of the arguments ({name: value}) sorted by name."""
    blob = json.dumps(canonical(dict(arguments)), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True)
    return f"{name}:{hashlib.sha256(blob.encode()).hexdigest()}"


def format_key(template, arguments):
    """template.format(**arguments), with a clear error for a missing name."""
    try:
        return template.format(**arguments)
    except (KeyError, AttributeError, IndexError) as e:
        raise ValueError(f"key template {template!r}: {e!r} is not an argument "
                         f"(arguments: {sorted(arguments)})") from None


def _schema_json(tp):
    v = pydantic_version()
    if v is None:
        raise ImportError("a model needs pydantic")
    import pydantic
    is_model = isinstance(tp, type) and issubclass(tp, pydantic.BaseModel)
    if v[0] >= 2:  # untested here: Debian 12 ships pydantic 1.10
        if is_model:
            schema = tp.model_json_schema()
        else:
            schema = pydantic.TypeAdapter(tp).json_schema()
        return json.dumps(schema, sort_keys=True, separators=(",", ":"))
    if is_model:
        return tp.schema_json()
    return pydantic.schema_json_of(tp)


def schema_tag(model):
    """SHA-256 (hex) of the model's JSON schema: pydantic 1 model.schema_json(),
    pydantic 2 model.model_json_schema(); any other type pydantic can validate
    (List[Model], ...) through schema_json_of / TypeAdapter."""
    return hashlib.sha256(_schema_json(model).encode()).hexdigest()


def json_codec():
    """(dumps, loads) for plain JSON data; values FastAPI can encode
    (models, dates, ...) go through its jsonable_encoder when it is there."""
    try:
        from fastapi.encoders import jsonable_encoder
    except ImportError:  # pragma: no cover - kcache.fastapi needs fastapi anyway
        def jsonable_encoder(v):
            return v

    def dumps(v):
        return json.dumps(jsonable_encoder(v), separators=(",", ":")).encode()

    def loads(b):
        return json.loads(b)
    return dumps, loads


def model_codec(model):
    """(dumps, loads) that store a value as the model's JSON and read it back
    as a validated model (or whatever type `model` is)."""
    v = pydantic_version()
    if v is None:
        raise ImportError("a model needs pydantic")
    import pydantic
    is_model = isinstance(model, type) and issubclass(model, pydantic.BaseModel)
    if v[0] >= 2:  # untested here
        adapter = pydantic.TypeAdapter(model)

        def dumps(x):
            return adapter.dump_json(x if is_model and isinstance(x, model)
                                     else adapter.validate_python(x))

        def loads(b):
            return adapter.validate_json(b)
        return dumps, loads
    if is_model:
        def dumps(x):
            return (x if isinstance(x, model) else model.parse_obj(x)).json().encode()

        def loads(b):
            return model.parse_raw(b)
        return dumps, loads
    from pydantic.json import pydantic_encoder

    def dumps(x):
        return json.dumps(pydantic.parse_obj_as(model, x), default=pydantic_encoder,
                          separators=(",", ":")).encode()

    def loads(b):
        return pydantic.parse_raw_as(model, b)
    return dumps, loads
