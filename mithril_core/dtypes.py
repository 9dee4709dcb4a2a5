"""Backend-neutral dtype names."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dtype:
    """A dtype known to every backend by ``name`` (``"float32"``, ``"int64"`` ...)."""

    name: str
    kind: str  # "float", "int" or "bool"

    def __repr__(self) -> str:
        return f"ml.{self.name}"


float16 = Dtype("float16", "float")
bfloat16 = Dtype("bfloat16", "float")
float32 = Dtype("float32", "float")
float64 = Dtype("float64", "float")
int8 = Dtype("int8", "int")
int16 = Dtype("int16", "int")
int32 = Dtype("int32", "int")
int64 = Dtype("int64", "int")
uint8 = Dtype("uint8", "int")
bool_ = Dtype("bool", "bool")

ALL_DTYPES: dict[str, Dtype] = {
    d.name: d
    for d in (
        float16,
        bfloat16,
        float32,
        float64,
        int8,
        int16,
        int32,
        int64,
        uint8,
        bool_,
    )
}


def as_dtype(value: Dtype | str) -> Dtype:
    """Return the :class:`Dtype` for ``value`` (a Dtype or its name)."""
    if isinstance(value, Dtype):
        return value
    name = getattr(value, "name", value)
    if name == "bool_":
        name = "bool"
    if isinstance(name, str) and name in ALL_DTYPES:
        return ALL_DTYPES[name]
    msg = f"Unknown dtype {value!r}; expected one of {', '.join(ALL_DTYPES)}."
    raise TypeError(msg)
