"""The acting side: the rollout worker loop (`worker`), the env contract (`contract`), the envs that obey
it (`envs/`: the embedded simulator, the fixed-tick stand-in, the env factory), CARLA (`carla/`: its
server's supervisor, session, watchdog, env, route, sensors and setup checks), the shared reward,
exploration, the scripted reference driver, evaluation and episode videos."""
