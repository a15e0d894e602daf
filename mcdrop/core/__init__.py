"""The sampling core: keyed randomness, dropout layers, models, the MC engine, uncertainty and metrics,
model artifacts.  Needs torch, NumPy, SciPy and safetensors (``pip install 'mcdrop[torch]'``)."""
