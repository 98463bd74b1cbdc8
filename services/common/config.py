"""One conversion for every service setting: plan mappings and protobuf messages → typed
configuration dataclasses, and back to messages.

Each service keeps its settings in dataclasses in `services/<name>/config.py`: they hold the
only copy of the defaults and a `validate()` that raises InvalidArgument naming the field.
Everything that fills one — a plan section, a gRPC request, a CLI — goes through the two
functions here, so a default can't drift between copies and every caller refuses the same
input with the same message.

Rules:
- a key absent from the mapping, or a message field that is not set, takes the dataclass
  default. Message fields whose zero value is meaningful are declared `optional` in the
  proto (tests/unit/test_config_defaults.py checks that, and that each documented default
  equals the dataclass default);
- unknown keys are an error naming them;
- values are checked against the field's annotated type (bool, int, float, str, tuples,
  `X | None`, nested configuration dataclasses) — never silently cast from another type;
- protobuf enums travel as their value name without the enum's prefix, lower-case
  (`BLEND_MODE_GAUSSIAN` ↔ "gaussian"); the `*_UNSPECIFIED` value means "not set".
"""
from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from typing import Any, Mapping, TypeVar, Union

from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from services.common.errors import InvalidArgument

T = TypeVar("T")
M = TypeVar("M", bound=Message)


# --- mappings → dataclasses ------------------------------------------------------------------


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def config_fields(cls: type) -> tuple[str, ...]:
    """Names of a configuration dataclass's fields that callers may set (init fields)."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.init)


def _describe(tp: Any) -> str:
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, where)
            except InvalidArgument as exc:
                errors.append(str(exc))
        raise InvalidArgument(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {tp}")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise InvalidArgument(f"{where} must be one of {', '.join(map(str, allowed))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise InvalidArgument(f"{where} must be a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise InvalidArgument(f"{where} must have {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise InvalidArgument(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise InvalidArgument(f"{where} must be a mapping of {', '.join(config_fields(tp))}, got {value!r}")
        return _build(tp, value, where, validate=False)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    else:
        raise TypeError(f"{where}: unsupported configuration type {tp!r}")
    raise InvalidArgument(f"{where} must be {_describe(tp)}, got {value!r}")


def _build(cls: type[T], values: Mapping[str, Any], where: str, validate: bool) -> T:
    if not isinstance(values, Mapping):
        raise InvalidArgument(f"{where} must be a mapping, got {type(values).__name__}")
    known = config_fields(cls)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise InvalidArgument(f"{where}: unknown field(s) {', '.join(map(str, unknown))}; known fields: {', '.join(known)}")
    required = [f.name for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in values]
    if missing:
        raise InvalidArgument(f"{where}: missing field(s) {', '.join(missing)}")
    hints = _hints(typing.cast(type, cls))  # a class is hashable; mypy can't tell through type[T]
    kwargs = {name: _coerce(hints[name], value, f"{where}.{name}") for name, value in values.items()}
    obj = cls(**kwargs)
    if validate:
        check = getattr(obj, "validate", None)
        if check is not None:
            check()
    return obj


def config_from_mapping(cls: type[T], values: Mapping[str, Any] | None, where: str | None = None) -> T:
    """`cls` with `values` over its defaults, type-checked and validated (InvalidArgument)."""
    return _build(cls, values or {}, where or cls.__name__, validate=True)


def replace_config(obj: T, where: str | None = None, **changes: Any) -> T:
    """A validated copy of `obj` with `changes` (type-checked like a mapping)."""
    cls = type(obj)
    values = {f: getattr(obj, f) for f in config_fields(cls)}
    values.update(changes)
    return config_from_mapping(cls, values, where)


# --- protobuf ↔ mappings ---------------------------------------------------------------------


def _enum_prefix(enum: EnumDescriptor) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"


def _enum_to_name(enum: EnumDescriptor, number: int, where: str) -> str | None:
    value = enum.values_by_number.get(number)
    if value is None:
        raise InvalidArgument(f"{where}: unknown {enum.name} value {number}")
    name = value.name.removeprefix(_enum_prefix(enum)).lower()
    return None if name == "unspecified" else name


def _enum_from_name(enum: EnumDescriptor, name: str, where: str) -> int:
    full = _enum_prefix(enum) + name.upper()
    value = enum.values_by_name.get(full)
    if value is None or value.number == 0:
        names = [v.name.removeprefix(_enum_prefix(enum)).lower() for v in enum.values if v.number != 0]
        raise InvalidArgument(f"{where} must be one of {', '.join(names)}, got {name!r}")
    return int(value.number)


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated) if hasattr(field, "is_repeated") else field.label == FieldDescriptor.LABEL_REPEATED


def _single(field: FieldDescriptor, value: Any, where: str) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_to_mapping(value, where=f"{where}.{field.name}")
    if field.type == FieldDescriptor.TYPE_ENUM:
        return _enum_to_name(field.enum_type, value, f"{where}.{field.name}")
    return value


def message_to_mapping(message: Message, exclude: tuple[str, ...] = (), where: str | None = None) -> dict[str, Any]:
    """The fields of `message` that are set, as plain values (enums by short name)."""
    where = where or message.DESCRIPTOR.name
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        if field.name in exclude:
            continue
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            if value:
                out[field.name] = dict(value)
        elif _is_repeated(field):
            if len(value):
                out[field.name] = [_single(field, v, where) for v in value]
        elif field.has_presence:
            if message.HasField(field.name):
                converted = _single(field, value, where)
                if converted is not None:
                    out[field.name] = converted
        elif value != field.default_value:
            converted = _single(field, value, where)
            if converted is not None:
                out[field.name] = converted
    return out


def config_from_proto(cls: type[T], message: Message, where: str | None = None, exclude: tuple[str, ...] = ()) -> T:
    """`cls` from the set fields of `message` (minus `exclude`: e.g. a request's dataset)."""
    where = where or message.DESCRIPTOR.name
    return config_from_mapping(cls, message_to_mapping(message, exclude, where), where)


def _set_field(message: Message, field: FieldDescriptor, value: Any, where: str) -> None:
    if value is None:
        return
    if isinstance(value, Message):
        getattr(message, field.name).CopyFrom(value)
        return
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = config_to_mapping(value)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        getattr(message, field.name).update(value)
    elif _is_repeated(field):
        container = getattr(message, field.name)
        for item in value:
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                if isinstance(item, Message):
                    container.add().CopyFrom(item)
                else:
                    mapping_to_message(item, container.add(), f"{where}.{field.name}")
            elif field.type == FieldDescriptor.TYPE_ENUM:
                container.append(_enum_from_name(field.enum_type, item, f"{where}.{field.name}"))
            else:
                container.append(item)
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        mapping_to_message(value, getattr(message, field.name), f"{where}.{field.name}")
    elif field.type == FieldDescriptor.TYPE_ENUM:
        setattr(message, field.name, _enum_from_name(field.enum_type, value, f"{where}.{field.name}"))
    else:
        setattr(message, field.name, value)


def mapping_to_message(values: Mapping[str, Any], message: M, where: str | None = None) -> M:
    """Fill `message` from a mapping of field names (enums by short name); returns it."""
    where = where or message.DESCRIPTOR.name
    fields = message.DESCRIPTOR.fields_by_name
    for name, value in values.items():
        if name not in fields:
            raise InvalidArgument(f"{where}: unknown field {name!r}")
        _set_field(message, fields[name], value, where)
    return message


def config_to_mapping(obj: Any) -> dict[str, Any]:
    """A configuration dataclass as JSON-ready values (tuples → lists): for cache keys,
    provenance and checkpoints."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f: plain(getattr(value, f)) for f in config_fields(type(value))}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(obj)  # type: ignore[no-any-return]


def config_to_proto(obj: Any, message_type: type[M], **extra: Any) -> M:
    """`message_type` with every field of `obj` that the message has set explicitly (so the
    receiver sees the sender's resolved values, not its own defaults), plus `extra` fields."""
    fields = message_type.DESCRIPTOR.fields_by_name
    values = {k: v for k, v in config_to_mapping(obj).items() if k in fields}
    values.update(extra)
    return mapping_to_message(values, message_type())
