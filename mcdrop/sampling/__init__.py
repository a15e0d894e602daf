"""Sampling: keyed randomness, stateless dropout functions, dropout layers, the MC engine with its registries of
dropout classes and fast paths, the fused C and Triton kernels, devices and precision.  Needs torch
(``pip install 'mcdrop[torch]'``)."""
