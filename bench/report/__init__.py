"""What people read, made from the records: comparison ``tables``, FD-CMKD ``studies`` (ablation,
threshold, sensitivity), the ``leaderboard`` (+ its offline HTML ``leaderboard_page``), ``figures``,
``analysis`` of trained checkpoints, and ``output`` (option checks and safe writes)."""
