"""One run, start to record: ``resolve`` (what to run and its identity) -> ``teachers`` (train or
reuse the unimodal teacher) -> ``loop`` (epochs, evaluation, selection on validation, checkpoints)
built on ``step`` (one training step) with ``acceleration``, ``placement`` and
``teacher_outputs`` (speed features) -> ``run`` (the record). ``stop`` holds the file locks and the
SIGTERM stop; ``benchmark`` is ``bench speed``, timing the same step."""
