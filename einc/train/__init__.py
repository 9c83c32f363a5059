"""Training: the one epoch loop (``loop``) and what feeds it.

``loop.train`` owns every rule of a training run — the epoch count and resume, divergence,
interrupts, keeping the best validation epoch, patience, checkpoints, progress — for EM and
Adam, with or without latents, in one process or many. Its callers (``Model.fit``,
``einc.train.distributed.fit``, the CLI's training session, ``einc.train.lvd``, ``einc.tools.compare``) differ only
in the ``EpochSteps`` they pass (``steps``: how one epoch updates the parameters) and the hooks
(how the train and valid log-likelihoods are measured, where checkpoints go, who prints).
"""
