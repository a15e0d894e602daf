"""Training, data sets, evaluation and reports.  Needs the core and torchvision (``mcdrop[train]``);
``configs`` alone imports no torch."""
