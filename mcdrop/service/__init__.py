"""The BentoML HTTP service over :class:`mcdrop.serving.predictor.Predictor`.  Needs BentoML (``mcdrop[serve]``)."""
