"""Importers: COCO instances JSON and image/mask folders → registered 'real' datasets."""
from ingest.importers.coco import import_coco
from ingest.importers.masks import MaskOptions, binary_components, import_masks
from ingest.importers.pipeline import ImportOptions, ImportProblems, ImportSummary

__all__ = ["ImportOptions", "ImportProblems", "ImportSummary", "MaskOptions", "binary_components", "import_coco", "import_masks"]
