"""Running it: the `fleet` command line (`cli`, `commands/`), configs (`config`, `experiment`), the
local and Ray runtimes with their actors (`runtime`, `actors`, `envs`, `progress`, `periodic_eval`),
evaluation and inspection of snapshots, and the learning benchmark (`learning_bench`)."""
