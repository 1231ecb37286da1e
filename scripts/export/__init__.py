"""Offline tools that turn trained models into served ones: one module per source format."""
