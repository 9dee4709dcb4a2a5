"""Public re-exports, which type checkers read statically (every package is typed)."""

import mithril_core.models as models
import mithril_core.primitives as primitives


def test_primitives_all_lists_every_core_primitive():
    # A literal list (type checkers cannot evaluate a computed one), kept in step here.
    names = [cls.__name__ for cls in primitives.CORE_PRIMITIVES]
    assert primitives.__all__ == [*names, "CORE_PRIMITIVES"]


def test_models_convolutions_are_the_composites():
    # mithril_core.models re-exports every primitive, but its Convolution1D/2D are the
    # layers with weight and bias; the bare primitives stay in mithril_core.primitives.
    for name in ("Convolution1D", "Convolution2D"):
        composite, primitive = getattr(models, name), getattr(primitives, name)
        assert composite.__module__ == "mithril_core.models.conv"
        assert primitive.__module__ == "mithril_core.primitives.nn"
        assert issubclass(primitive, models.Primitive)
        assert not issubclass(composite, models.Primitive)
