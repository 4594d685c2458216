"""The small pieces every package shares, at the bottom of the import graph (they import nothing of
carla-fleet but each other): the error root (`errors`), the chunk format workers send (`chunks`), process
and heap helpers (`procfs`, `heap`) and the MKL preload for AMD CPUs (`mkl_amd`). This is all that
`checkpoint_store` takes from `learner/`."""
