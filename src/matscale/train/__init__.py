"""Training: loss, schedule, EMA, step, loop, evaluation, checkpoints and logs."""
