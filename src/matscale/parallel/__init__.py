"""Parallelism applied to a plain model from outside: process groups and data parallelism."""
