"""Running it, by job: `runtime/` (configs, the training loop, the local and Ray runs with their actors,
progress, nodes, evaluation of snapshots), `cli/` (the `fleet` command line) and `bench/` (`fleet bench`).
Beside them: the cluster YAMLs, the experiment configs (`configs/`), the CARLA setup checks (`envs.py`)
and the end-to-end check of a real `ray up` (`cluster_check.py`, `make cluster-check`).
The runtime imports neither the command line nor the benchmarks."""
