"""Importers: COCO instances JSON and image/mask folders → registered 'real' datasets."""
from services.common.importers.coco import import_coco
from services.common.importers.masks import MaskOptions, binary_components, import_masks
from services.common.importers.pipeline import ImportOptions, ImportProblems, ImportSummary

__all__ = ["ImportOptions", "ImportProblems", "ImportSummary", "MaskOptions", "binary_components", "import_coco", "import_masks"]
