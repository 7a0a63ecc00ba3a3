"""Where runs execute: ``grid`` expands and validates the grid, ``local`` runs it in this process,
``packed`` runs several per GPU in worker processes, ``slurm`` fans it out as job arrays."""
