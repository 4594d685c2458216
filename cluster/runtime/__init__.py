"""The run: configs, the training loop, the local and Ray runs with their actors, progress, nodes.

Nothing here imports the command line (`cluster.cli`) or the benchmarks (`cluster.bench`).
"""
