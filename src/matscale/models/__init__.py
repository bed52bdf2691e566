"""Models: single-device ``nn.Module``s from an AtomGraph to per-atom and total energies."""
