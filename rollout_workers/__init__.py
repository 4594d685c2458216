"""The acting side: the rollout worker loop (`worker`), the env contract (`contract`) and the envs
that obey it (`envs/`), the shared reward, exploration, the scripted reference driver, evaluation,
episode videos and the CARLA server supervisor (`carla_server`)."""
