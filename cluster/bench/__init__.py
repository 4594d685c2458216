"""`fleet bench NAME`: one module per benchmark, each with `register(cli)` (found by `cluster.cli`), and the
learning benchmark's runs (`learning_run`). Benchmarks measure; they are never timed tests."""
