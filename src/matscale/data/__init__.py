"""Data layer: structures, readers, generators, the shard store, graphs, sampling, batching."""
