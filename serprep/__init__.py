"""serprep: turn speech emotion corpora into self-describing HDF5 feature stores."""

__version__ = "0.5.0"
