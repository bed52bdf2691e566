"""Scaling studies: sweeps over model size × data size (:mod:`sweep`, :mod:`runner`), their
results table (:mod:`results`), power-law fits with bootstrap intervals and the
compute-optimal frontier (:mod:`fit`, :mod:`analysis`), figures (:mod:`plot`) and the
Markdown report (:mod:`report`)."""
