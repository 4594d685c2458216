"""One module per `fleet` command or `fleet bench` benchmark; each defines `register(cli)` and is
discovered by `cluster.cli`, so adding a command edits no other file."""
