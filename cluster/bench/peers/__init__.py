"""The learning benchmark's peers that need heavy imports (RLlib): imported only when a benchmark runs them,
never by the command line's discovery of `fleet bench` modules."""
