"""KD methods (installed as ``bench.methods``); one module per method."""
