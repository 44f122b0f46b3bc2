"""Stage one: the frozen base run over an image folder once, its features kept in HDF5: the
local and Ray engines behind one ``Engine`` protocol, the placement they run at, and how the base
executes (``execution``)."""
