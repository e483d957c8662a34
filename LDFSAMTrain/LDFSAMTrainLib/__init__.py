"""Plain-Python parts of the LDFSAM Train module (no Slicer, no Qt): the training command lines, the curve
table and the evaluation table. Process handling, progress and dependencies come from LDFSAMSegmentLib."""
