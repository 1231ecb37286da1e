"""Recipes for concrete models and data sets: the default model set, ELPV, the shapes data."""
