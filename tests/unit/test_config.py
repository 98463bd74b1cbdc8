"""The one mapping/proto → configuration conversion (services.common.config)."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from services.common.config import config_from_mapping, config_from_proto, config_to_proto, message_to_mapping, replace_config
from services.common.errors import InvalidArgument
from synthaug.v1 import compositor_pb2


@dataclass(frozen=True)
class Span:
    min: float
    max: float


@dataclass(frozen=True)
class Toy:
    size: int = 256
    ratio: float = 0.5
    on: bool = True
    name: str = "a"
    layers: int | None = None
    span: Span = field(default_factory=lambda: Span(0.1, 0.2))
    milestones: tuple[float, ...] = (0.5, 0.9)

    def validate(self) -> None:
        if self.size < 8:
            raise InvalidArgument(f"Toy.size must be ≥ 8, got {self.size}")


def test_absent_keys_take_the_defaults_and_values_are_type_checked() -> None:
    assert config_from_mapping(Toy, {}) == Toy()
    toy = config_from_mapping(Toy, {"size": 64, "ratio": 1, "layers": 3, "span": {"min": 0, "max": 1}, "milestones": [0.25]})
    assert toy == Toy(size=64, ratio=1.0, layers=3, span=Span(0.0, 1.0), milestones=(0.25,))
    assert isinstance(toy.ratio, float)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"size": "64"}, "Toy.size must be an integer, got '64'"),
        ({"size": True}, "Toy.size must be an integer, got True"),
        ({"on": 1}, "Toy.on must be true or false, got 1"),
        ({"ratio": "x"}, "Toy.ratio must be a number"),
        ({"span": {"min": 0}}, "Toy.span"),
        ({"sise": 3}, "unknown field(s) sise"),
        ({"size": 4}, "Toy.size must be ≥ 8, got 4"),
    ],
)
def test_bad_values_name_the_field(values: dict, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        config_from_mapping(Toy, values)
    assert message in str(info.value)


def test_replace_config_validates() -> None:
    assert replace_config(Toy(), size=16).size == 16
    with pytest.raises(InvalidArgument, match="Toy.size"):
        replace_config(Toy(), size=2)


def test_message_presence_and_enums() -> None:
    """Only set fields are read; an optional 0 is set; enums travel by short lower-case name."""
    msg = compositor_pb2.ComposeParams(max_overlap_iou=0.0, blend=compositor_pb2.BLEND_MODE_POISSON)
    assert message_to_mapping(msg) == {"max_overlap_iou": 0.0, "blend": "poisson"}
    assert message_to_mapping(compositor_pb2.ComposeParams(blend=compositor_pb2.BLEND_MODE_UNSPECIFIED)) == {}


def test_config_to_proto_sets_every_field_explicitly() -> None:
    @dataclass(frozen=True)
    class Params:
        output_size: int = 64
        max_overlap_iou: float = 0.0
        blend: str = "hard"
        scale: Span = field(default_factory=lambda: Span(0.3, 0.4))

        def validate(self) -> None: ...

    msg = config_to_proto(Params(), compositor_pb2.ComposeParams)
    assert msg.HasField("max_overlap_iou") and msg.max_overlap_iou == 0.0
    assert msg.blend == compositor_pb2.BLEND_MODE_HARD
    assert (msg.scale.min, msg.scale.max) == pytest.approx((0.3, 0.4))
    assert config_from_proto(Params, msg) == Params()
    with pytest.raises(InvalidArgument, match="blend must be one of hard, gaussian, poisson"):
        config_to_proto(Params(blend="soft"), compositor_pb2.ComposeParams)
