"""How the frozen base runs during extraction (``Runtime.execution``): ``prepare`` picks eager, the
BatchNorm fold (checked against eager), or the fold compiled by ``torch.compile``."""
