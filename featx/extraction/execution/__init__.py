"""How the frozen base runs during extraction (``Runtime.execution``): ``prepare`` picks torch
(eager, the BatchNorm fold checked against eager, or the fold compiled by ``torch.compile``) or the
exported ONNX graph on ONNX Runtime or OpenVINO, and for ``auto`` the fastest of them here."""
