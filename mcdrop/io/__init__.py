"""Readers and writers of files for bulk scoring.  Needs NumPy; Parquet needs pyarrow (``mcdrop[parquet]``)."""
