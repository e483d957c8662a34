"""The LDFSAM Train module's parts. Plain Python (no Slicer, no Qt, tested outside Slicer): ``commands`` (the
training command lines and the output folder's layout), ``curves``, ``evaluation_table``. Slicer layer:
``parameters``, ``logic``, ``widget``. Process handling, progress, dependencies and the widget life cycle come
from LDFSAMSegmentLib."""
