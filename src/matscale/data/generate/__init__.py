"""Generators of the embedded default data, labelled by real calculators (no download)."""
