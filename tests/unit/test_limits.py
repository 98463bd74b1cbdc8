"""Request limits: found by setting name anywhere in a request or config, named when over."""
from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument
from services.common.limits import BOUNDED_SETTINGS, ENV, RequestLimits
from services.gan.config import GanConfig
from synthaug.v1 import common_pb2, gan_pb2, segmenter_pb2

LIMITS = RequestLimits(max_epochs=50, max_iterations=1000, max_batch_size=16, max_images=100, max_image_size=512)


def test_nested_and_repeated_settings_are_found_and_named() -> None:
    request = segmenter_pb2.SegmenterTrainRequest(
        sources=[segmenter_pb2.TrainingSource(count=10), segmenter_pb2.TrainingSource(count=101)],
        config=segmenter_pb2.SegmenterConfig(epochs=50, batch_size=16),
    )
    with pytest.raises(InvalidArgument) as info:
        LIMITS.check_request(request)
    assert str(info.value) == ("SegmenterTrainRequest.sources[1].count = 101 is over this deployment's limit of 100 "
                               "(SYNTHAUG_MAX_IMAGES; raise it there if this is intended)")
    request.sources[1].count = 100
    LIMITS.check_request(request)  # at the limit is allowed
    request.config.iterations = 1001
    with pytest.raises(InvalidArgument, match=r"SegmenterTrainRequest\.config\.iterations = 1001 .* \(SYNTHAUG_MAX_ITERATIONS"):
        LIMITS.check_request(request)


def test_data_that_merely_shares_a_name_is_not_a_setting() -> None:
    """A dataset reference's image count describes data; it is not a request for work."""
    request = segmenter_pb2.SegmenterTrainRequest(
        sources=[segmenter_pb2.TrainingSource(count=1, dataset=common_pb2.DatasetRef(id="x", num_images=10**6))])
    LIMITS.check_request(request)


def test_config_dataclasses_are_checked_the_same_way() -> None:
    LIMITS.check_config(GanConfig(n_epochs=50, n_epochs_decay=50, batch_size=16, image_size=512), "gan.config")
    with pytest.raises(InvalidArgument, match=r"^gan\.config\.n_epochs_decay = 51 is over .* 50 \(SYNTHAUG_MAX_EPOCHS"):
        LIMITS.check_config(GanConfig(n_epochs=1, n_epochs_decay=51), "gan.config")
    with pytest.raises(InvalidArgument, match=r"^GanGenerateRequest\.count = 101"):
        LIMITS.check_request(gan_pb2.GanGenerateRequest(count=101))


def test_limits_from_the_environment() -> None:
    assert RequestLimits.from_env({}) == RequestLimits()
    assert RequestLimits.from_env({"SYNTHAUG_MAX_IMAGE_SIZE": "1024"}).max_image_size == 1024
    for bad in ("0", "-3", "many"):
        with pytest.raises(InvalidArgument, match="SYNTHAUG_MAX_BATCH_SIZE"):
            RequestLimits.from_env({"SYNTHAUG_MAX_BATCH_SIZE": bad})
    assert set(BOUNDED_SETTINGS.values()) == set(ENV)  # every bound has its variable and is used
