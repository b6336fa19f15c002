"""Experiments over runs: the runs table (`runs_table`), sweeps (`sweeps`) and a run's HTML report (`report`)."""
