"""The registry of segmentation architectures, by name (torch-free).

A plan or a request names an architecture; checking that name must not cost a torch import
(plans are validated without torch), so this table holds only what configuration checks
need — the name, the builder as a "module:function" string imported when a network is first
built, default sizes, the outputs and the torchvision weights that fit. The networks
themselves live in `services/segmenter/core/` (one file per family, e.g. `core/maskrcnn.py`).

Adding an architecture is one new file with a builder
``build(spec: ModelSpec, detector_weights, backbone_weights) -> SegmentationModel`` (see
`core/models.py` for the contract the trainer and predictor rely on) plus one
`Architecture(...)` line in `_BUILTIN` below — as torchvision's model builders or pix2pix's
`find_model_using_name`. Tests register toy architectures at run time with `register`.
"""
from __future__ import annotations

from dataclasses import dataclass

from services.common.errors import InvalidArgument

#: What the trainer and predictor read from a network in eval mode (one dict per image).
REQUIRED_OUTPUTS = ("boxes", "labels", "scores", "masks")


@dataclass(frozen=True)
class Architecture:
    """One registered architecture: everything about it that is known without building it."""

    name: str
    #: "module:function" that builds the network; imported lazily (the module imports torch).
    builder: str
    summary: str = ""
    #: Keys of each per-image result in eval mode; at least REQUIRED_OUTPUTS.
    outputs: tuple[str, ...] = REQUIRED_OUTPUTS
    #: Input resize (shorter side / longer-side limit) the architecture was designed for: the
    #: ModelSpec size when a model file names none. Training uses the configured size, or the
    #: images' own size (SegmenterConfig.min_size / max_size = 0).
    min_size: int = 800
    max_size: int = 1333
    #: torchvision weights enum of the whole detector ("DEFAULT" names its default), or None.
    detector_weights: str | None = None
    #: torchvision weights enum of the backbone alone, or None.
    backbone_weights: str | None = None
    #: State-dict prefixes of the class-count-dependent heads: re-initialised, not refused,
    #: when weights trained for another number of classes are loaded.
    class_heads: tuple[str, ...] = ()

    def check_torchvision_weights(self, name: str, where: str = "SegmenterConfig.weights") -> None:
        """Refuse a torchvision weights name that cannot fit this architecture (by its enum
        name; whether the value exists is torchvision's to say when the model is built)."""
        if name == "DEFAULT":
            if self.detector_weights is None:
                raise InvalidArgument(f"{where} 'DEFAULT': {self.name} has no torchvision detector weights")
            return
        enum, dot, value = name.partition(".")
        fitting = [e for e in (self.detector_weights, self.backbone_weights) if e]
        if not dot or not value:
            raise InvalidArgument(f"{where} {name!r} is not a torchvision weights name (expected 'DEFAULT' or "
                                  f"'<Enum>.<VALUE>' with Enum one of {', '.join(fitting) or 'none for ' + self.name})")
        if enum not in fitting:
            raise InvalidArgument(f"{where} {name!r} does not fit architecture {self.name} "
                                  f"(its torchvision weights: {', '.join(fitting) or 'none'})")


_MASKRCNN_HEADS = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")

_BUILTIN = (
    Architecture("maskrcnn_resnet50_fpn", "services.segmenter.core.maskrcnn:build_resnet50_fpn",
                 "torchvision's Mask R-CNN, ResNet-50-FPN (the thesis model)",
                 detector_weights="MaskRCNN_ResNet50_FPN_Weights", backbone_weights="ResNet50_Weights",
                 class_heads=_MASKRCNN_HEADS),
    Architecture("maskrcnn_resnet50_fpn_v2", "services.segmenter.core.maskrcnn:build_resnet50_fpn_v2",
                 "torchvision's improved Mask R-CNN v2, ResNet-50-FPN",
                 detector_weights="MaskRCNN_ResNet50_FPN_V2_Weights", backbone_weights="ResNet50_Weights",
                 class_heads=_MASKRCNN_HEADS),
    Architecture("maskrcnn_resnet18_fpn", "services.segmenter.core.maskrcnn:build_resnet18_fpn",
                 "light Mask R-CNN: ResNet-18, 128-channel FPN, slim heads (CPU demos and tests)",
                 backbone_weights="ResNet18_Weights", class_heads=_MASKRCNN_HEADS),
)

DEFAULT_ARCHITECTURE = "maskrcnn_resnet50_fpn"

_REGISTRY: dict[str, Architecture] = {a.name: a for a in _BUILTIN}


def register(architecture: Architecture) -> Architecture:
    """Add (or replace) an architecture; returns it. Refuses one that lacks the outputs the
    trainer and predictor read or whose builder is not a "module:function" string."""
    missing = [o for o in REQUIRED_OUTPUTS if o not in architecture.outputs]
    if missing:
        raise ValueError(f"architecture {architecture.name!r} lacks the outputs {missing}")
    module, colon, function = architecture.builder.partition(":")
    if not (module and colon and function):
        raise ValueError(f"architecture {architecture.name!r}: builder {architecture.builder!r} is not 'module:function'")
    _REGISTRY[architecture.name] = architecture
    return architecture


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def architecture_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_architecture(name: str, where: str = "SegmenterConfig.architecture") -> Architecture:
    """The registered architecture `name`; InvalidArgument naming the known ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InvalidArgument(f"{where} {name!r} is unknown; expected one of {', '.join(_REGISTRY)}") from None
