"""Mask R-CNN training and export helpers (torch only; the service never imports these)."""
