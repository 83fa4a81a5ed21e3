"""The training core: the RST clock and tables, schedules, optimizers, the one loop, run records."""
