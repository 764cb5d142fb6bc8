"""Frozen typed records: the part of `dataclasses.dataclass(frozen=True)` the configuration uses.

Job: turn a class with annotated fields (and defaults, or `field(default_factory=...)`) into a
read-only record: keyword or positional __init__ filling every default, __repr__, __eq__ and
__hash__ over the fields in order, assignment and deletion refused with FrozenInstanceError (an
AttributeError), and `fields()`, `replace()`, `is_record()` like dataclasses' functions.

Why not dataclasses: it imports inspect (with ast, dis, tokenize: ~4 ms and ~1.4 MB on a box) and
compiles six methods per class with exec() at every import: agent/config.py's 15 classes cost the
daemon ~10 ms of each start (issue 20, docs/bench/weight.txt). Here the methods are shared closures
over the field list, compiled once into the module's bytecode.

Must never: let a record be changed in place after __init__ (reload builds a new Config), accept
an unknown or duplicated argument silently, or import anything beyond the standard library's core.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: `typing` costs the daemon's start ~2 ms (issue 20)
    from typing import Any, Callable


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()  # no default


class FrozenInstanceError(AttributeError):
    """An assignment to, or deletion of, a field of a frozen record."""


class Field:
    """One field: its name, annotation (a string under `from __future__ import annotations`),
    default or default factory (MISSING when it has none)."""

    __slots__ = ("name", "type", "default", "default_factory")

    def __init__(self, default: Any = MISSING, default_factory: Any = MISSING) -> None:
        if default is not MISSING and default_factory is not MISSING:
            raise ValueError("a field cannot have both a default and a default_factory")
        self.name = ""
        self.type: Any = None
        self.default = default
        self.default_factory = default_factory

    def __repr__(self) -> str:
        return "Field(name=%r, type=%r, default=%r, default_factory=%r)" % (
            self.name, self.type, self.default, self.default_factory)


def field(*, default: Any = MISSING, default_factory: Callable[[], Any] | Any = MISSING) -> Any:
    """A field's default made by calling default_factory for each new record (mutable or computed)."""
    return Field(default, default_factory)


def record(cls: type) -> type:
    """The class decorator: cls becomes a frozen record of its annotated fields, in order."""
    flds = []
    seen_default = False
    for name, ann in cls.__dict__.get("__annotations__", {}).items():
        value = cls.__dict__.get(name, MISSING)
        f = value if isinstance(value, Field) else Field(default=value)
        f.name, f.type = name, ann
        if isinstance(value, Field):
            if f.default is MISSING:
                delattr(cls, name)  # as dataclasses does: no class attribute for a factory default
            else:
                setattr(cls, name, f.default)
        has_default = f.default is not MISSING or f.default_factory is not MISSING
        if seen_default and not has_default:
            raise TypeError("non-default field %r follows a default field in %s" % (name, cls.__name__))
        seen_default = seen_default or has_default
        flds.append(f)
    fields_t = tuple(flds)
    names = tuple(f.name for f in fields_t)
    qualname = cls.__qualname__
    setter = object.__setattr__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(names):
            raise TypeError("%s() takes %d arguments but %d were given" % (qualname, len(names), len(args)))
        for i, f in enumerate(fields_t):
            if i < len(args):
                if f.name in kwargs:
                    raise TypeError("%s() got multiple values for argument %r" % (qualname, f.name))
                v = args[i]
            elif f.name in kwargs:
                v = kwargs.pop(f.name)
            elif f.default is not MISSING:
                v = f.default
            elif f.default_factory is not MISSING:
                v = f.default_factory()
            else:
                raise TypeError("%s() missing required argument %r" % (qualname, f.name))
            setter(self, f.name, v)
        if kwargs:
            raise TypeError("%s() got an unexpected keyword argument %r" % (qualname, next(iter(kwargs))))

    def _values(self: Any) -> tuple:
        return tuple(getattr(self, n) for n in names)

    def __repr__(self: Any) -> str:
        return "%s(%s)" % (qualname, ", ".join("%s=%r" % (n, getattr(self, n)) for n in names))

    def __eq__(self: Any, other: Any) -> Any:
        if other.__class__ is self.__class__:
            return _values(self) == _values(other)
        return NotImplemented

    def __hash__(self: Any) -> int:
        return hash(_values(self))

    def __setattr__(self: Any, name: str, value: Any) -> None:
        raise FrozenInstanceError("cannot assign to field %r" % name)

    def __delattr__(self: Any, name: str) -> None:
        raise FrozenInstanceError("cannot delete field %r" % name)

    for fn in (__init__, __repr__, __eq__, __hash__, __setattr__, __delattr__):
        fn.__qualname__ = "%s.%s" % (qualname, fn.__name__)
        if fn.__name__ not in cls.__dict__:
            setattr(cls, fn.__name__, fn)
    cls.__record_fields__ = fields_t  # type: ignore[attr-defined]
    return cls


def is_record(obj: Any) -> bool:
    """Whether obj is a record class or an instance of one."""
    return hasattr(obj, "__record_fields__")


def fields(obj: Any) -> tuple[Field, ...]:
    """The fields of a record class or instance, in order."""
    try:
        return obj.__record_fields__
    except AttributeError:
        raise TypeError("fields() needs a record class or instance, not %s" % type(obj).__name__) from None


def replace(obj: Any, **changes: Any) -> Any:
    """A new record like obj with the named fields changed (an unknown name raises TypeError)."""
    for f in fields(obj):
        if f.name not in changes:
            changes[f.name] = getattr(obj, f.name)
    return obj.__class__(**changes)
