"""Equal-budget tuning (``bench tune``): every method gets the same number of Optuna trials over
its own search space on the validation split, then ``bench run --tuned`` runs each method's best
configuration with fresh seeds on test.

Modules, in the order a study goes through them: ``space`` (a method's search space, plus the
shared ``train.lr``), ``plan`` (the studies of a grid and their identities), ``study`` (storage,
locks, stale trials, the exact trial budget), ``objective`` (one trial: a run that never reads
the test split), ``worker`` (the trial loop; local processes and SLURM arrays), ``progress``
(the live table and the optimisation-history plots) and ``best`` (``bench run --tuned``).
"""
