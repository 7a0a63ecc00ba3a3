"""Dataset adapters (installed as ``bench.datasets``); one module per dataset."""
