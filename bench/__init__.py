"""cmkd-bench: a benchmark and leaderboard harness for cross-modal knowledge distillation."""

__version__ = "0.1.0"
