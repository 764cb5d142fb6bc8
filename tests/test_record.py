"""agent/record.py: frozen typed records, the part of dataclasses(frozen=True) the configuration uses,
checked against what dataclasses does for the same class."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from agent import record


def _factory() -> list:
    return [1]


@record.record
class R:
    """doc"""

    a: int
    b: str = "x"
    c: typing.Optional[int] = None
    d: list = record.field(default_factory=_factory)


@dataclasses.dataclass(frozen=True)
class D:
    a: int
    b: str = "x"
    c: typing.Optional[int] = None
    d: list = dataclasses.field(default_factory=_factory)


@pytest.mark.parametrize("args,kwargs", [((1,), {}), ((1, "y"), {"c": 3}), ((), {"a": 2, "d": [5]}),
                                          ((1, "y", 2, [0]), {})])
def test_construction_repr_equality_and_hash_as_dataclasses_do(args, kwargs):
    r, d = R(*args, **kwargs), D(*args, **kwargs)
    assert [getattr(r, f.name) for f in record.fields(r)] == [getattr(d, f.name) for f in dataclasses.fields(d)]
    assert repr(r).replace("R(", "D(", 1).replace("test_record.", "") == repr(d).replace("test_record.", "")
    assert r == R(*args, **kwargs) and r != R(99) and r != d
    if isinstance(r.d, list):
        with pytest.raises(TypeError):  # unhashable field: unhashable record, as with dataclasses
            hash(r)
    assert R(1).d is not R(1).d  # a fresh default per record


def test_a_record_with_hashable_fields_hashes_like_its_values():
    r = R(1, d=(1,))
    assert hash(r) == hash(R(1, d=(1,))) and {r: 1}[R(1, d=(1,))] == 1


@pytest.mark.parametrize("args,kwargs,message", [
    ((), {}, "missing required argument 'a'"),
    ((1,), {"a": 2}, "multiple values for argument 'a'"),
    ((1,), {"e": 2}, "unexpected keyword argument 'e'"),
    ((1, 2, 3, 4, 5), {}, "takes 4 arguments but 5 were given"),
])
def test_wrong_arguments_raise_type_error(args, kwargs, message):
    with pytest.raises(TypeError, match=message):
        R(*args, **kwargs)
    with pytest.raises(TypeError):
        D(*args, **kwargs)


def test_frozen_fields_replace_and_introspection():
    r = R(1)
    with pytest.raises(record.FrozenInstanceError):
        r.a = 2
    with pytest.raises(AttributeError):
        del r.b
    with pytest.raises(AttributeError):
        r.new = 1
    r2 = record.replace(r, b="z")
    assert (r2.a, r2.b, r.b) == (1, "z", "x")
    with pytest.raises(TypeError):
        record.replace(r, zz=1)
    assert [(f.name, f.type) for f in record.fields(R)] == [("a", "int"), ("b", "str"), ("c", "typing.Optional[int]"),
                                                          ("d", "list")]
    assert record.fields(R)[1].default == "x" and record.fields(R)[3].default_factory is _factory
    assert record.fields(R)[0].default is record.MISSING and R.b == "x" and not hasattr(R, "d")
    assert record.is_record(R) and record.is_record(r) and not record.is_record(D)
    assert typing.get_type_hints(R)["c"] == typing.Optional[int]
    with pytest.raises(TypeError):
        record.fields(D)


def test_a_field_without_default_after_one_with_is_refused():
    with pytest.raises(TypeError, match="non-default field 'b'"):
        @record.record
        class Bad:
            a: int = 1
            b: int
