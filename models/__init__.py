"""The bundled models, installed as the package ``mcdrop.bundled`` (see ``pyproject.toml``) and found through
``importlib.resources``, so they come with a wheel as with a checkout.  One folder per model: weights and card."""
