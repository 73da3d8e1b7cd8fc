"""Synthetic studies written as real DICOM series, with ground truth."""
