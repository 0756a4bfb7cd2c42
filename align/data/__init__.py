"""Datasets for recipes: loading from specs, TRL format detection and row checks, data cards."""

from align.data.cards import write_data_card
from align.data.formats import FORMATS, detect_format, is_conversational, validate_dataset
from align.data.loading import DATASET_SPEC_KEYS, load_dataset

__all__ = ["DATASET_SPEC_KEYS", "FORMATS", "detect_format", "is_conversational", "load_dataset",
           "validate_dataset", "write_data_card"]
