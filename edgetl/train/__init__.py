"""Training machinery under ``edgetl finetune``, pruning recovery and search trials: one loop for all of them.

``settings`` is what a training needs (:class:`~.settings.TrainSettings`, built by each command's config);
``trainer`` is the epoch loop with seams: a model, a loss object, an optimizer/scheduler and callbacks;
``callbacks`` holds checkpointing, moving a new run into place and early stopping; ``stage`` runs a training
as a run's finetune stage (and resumes one); ``strategies`` decides which parameters train when;
``schedules`` and ``losses`` hold the pieces a trainer is assembled from; ``distributed`` runs it in several
processes.
"""
