"""CARLA, all of it: the server supervisor (`server`: launch, attach through CARLA_HOSTS, restart, port
claims), a worker's session with its server (`session`), the watchdog in a server's process group
(`watchdog`), the env adapter (`env`) with its route (`route`) and sensors (`sensors`), and the checks a
CARLA run passes before it starts (`checks`). Tested against a double of the client API
(tests/fake_carla.py); a live test runs only when CARLA_HOSTS is set."""
