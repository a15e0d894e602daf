"""From request to response without HTTP: the predictor, the scheduler and the service's settings.
Needs the core (``mcdrop[torch]``)."""
