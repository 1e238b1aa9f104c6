"""Training machinery under ``edgetl finetune`` (and, next, pruning recovery and search trials).

``trainer`` is the epoch loop with seams: it takes a model, a loss object, an optimizer/scheduler and
callbacks; ``strategies`` decides which parameters train when; ``schedules`` and ``losses`` hold the
pieces a trainer is assembled from; ``callbacks`` holds early stopping, checkpointing and reporting.
"""
