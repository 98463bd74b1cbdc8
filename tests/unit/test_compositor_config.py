"""The compositor's settings: requests and plan mappings → ForegroundParams / BackgroundParams /
ComposeParams, with one set of defaults and messages that name the field."""
from __future__ import annotations

import pytest

from services.common.config import (
    config_from_mapping,
    config_from_proto,
    config_to_proto,
)
from services.common.errors import InvalidArgument
from services.compositor.config import (
    BackgroundParams,
    ComposeParams,
    ForegroundParams,
    Range,
)
from synthaug.v1 import compositor_pb2 as pb

#: Request fields that are inputs, not settings (as the server excludes them).
FOREGROUND_INPUTS = ("dataset", "split")
BACKGROUND_INPUTS = ("dataset", "split", "image_prefix", "seed")


def test_unset_request_fields_take_the_defaults_and_zero_is_a_value() -> None:
    assert config_from_proto(ForegroundParams, pb.ExtractForegroundsRequest(split="train"), exclude=FOREGROUND_INPUTS) \
        == ForegroundParams(min_area=64, feather_sigma=1.0, padding=8, keep_truncated=False)
    zeros = pb.ExtractForegroundsRequest(min_area=0, feather_sigma=0.0, padding=0, keep_truncated=True)
    assert config_from_proto(ForegroundParams, zeros, exclude=FOREGROUND_INPUTS) == ForegroundParams(0, 0.0, 0, True)
    harvest = pb.HarvestBackgroundsRequest(image_prefix="user/", seed=3, dilate_px=0)
    assert config_from_proto(BackgroundParams, harvest, exclude=BACKGROUND_INPUTS) == BackgroundParams(dilate_px=0)


def test_background_methods_travel_by_short_name() -> None:
    names = {pb.BACKGROUND_METHOD_AS_IS: "as_is", pb.BACKGROUND_METHOD_INPAINT_TELEA: "inpaint_telea",
             pb.BACKGROUND_METHOD_INPAINT_NS: "inpaint_ns", pb.BACKGROUND_METHOD_CROP: "crop"}
    for number, name in names.items():
        params = config_from_proto(BackgroundParams, pb.HarvestBackgroundsRequest(method=number), exclude=BACKGROUND_INPUTS)
        assert params.method == name
        assert config_to_proto(params, pb.HarvestBackgroundsRequest).method == number
    assert config_from_mapping(BackgroundParams, {"method": "crop", "crop_size": 32}).crop_size == 32


def test_unset_method_depends_on_the_source_and_prefixes_take_images_as_they_are() -> None:
    assert BackgroundParams().method_for(from_dataset=True) == "inpaint_telea"
    assert BackgroundParams().method_for(from_dataset=False) == "as_is"
    assert BackgroundParams(method="crop").method_for(from_dataset=True) == "crop"
    assert BackgroundParams(method="as_is").method_for(from_dataset=False) == "as_is"
    with pytest.raises(InvalidArgument, match="'inpaint_ns' needs a dataset"):
        BackgroundParams(method="inpaint_ns").method_for(from_dataset=False)


@pytest.mark.parametrize(("cls", "values", "message"), [
    (ForegroundParams, {"min_area": -1}, "ForegroundParams.min_area must be ≥ 0, got -1"),
    (ForegroundParams, {"feather_sigma": 51}, "ForegroundParams.feather_sigma must be in [0, 50], got 51.0"),
    (ForegroundParams, {"padding": 300}, "ForegroundParams.padding must be in [0, 256], got 300"),
    (BackgroundParams, {"method": "telea"}, "BackgroundParams.method must be one of as_is, inpaint_telea, inpaint_ns, crop"),
    (BackgroundParams, {"dilate_px": -2}, "BackgroundParams.dilate_px must be in [0, 256], got -2"),
    (BackgroundParams, {"method": "crop", "crop_size": 4}, "BackgroundParams.crop_size must be in [8, 8192]"),
    (BackgroundParams, {"max_backgrounds": -1}, "BackgroundParams.max_backgrounds must be ≥ 0"),
    (ComposeParams, {"scale": {"min": 0.5}}, "ComposeParams.scale: missing field(s) max"),
    (ComposeParams, {"blend": "median"}, "ComposeParams.blend must be one of hard, gaussian, poisson"),
])
def test_bad_settings_name_the_field(cls: type, values: dict, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        config_from_mapping(cls, values)
    assert message in str(info.value)


def test_a_crop_size_only_matters_to_the_crop_method() -> None:
    assert BackgroundParams(crop_size=4).validate().crop_size == 4  # ignored by inpainting


def test_compose_params_from_the_message_keep_explicit_zeros_and_ranges() -> None:
    msg = pb.ComposeParams(output_size=64, max_overlap_iou=0.0, tone_match=0.0, blend=pb.BLEND_MODE_POISSON,
                           brightness=pb.Range(min=0.0, max=1.5), image_format="png")
    params = config_from_proto(ComposeParams, msg)
    assert params == ComposeParams(output_size=64, max_overlap_iou=0.0, tone_match=0.0, blend="poisson",
                                   brightness=Range(0.0, 1.5), image_format="png")
    with pytest.raises(InvalidArgument, match="ComposeParams.scale: missing field"):
        config_from_proto(ComposeParams, pb.ComposeParams(scale=pb.Range(max=0.5)))
    with pytest.raises(InvalidArgument, match="ComposeParams.hue is inverted"):
        config_from_proto(ComposeParams, pb.ComposeParams(hue=pb.Range(min=5, max=-5)))
