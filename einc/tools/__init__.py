"""Tools around the model: backend comparison (``compare``) and structure learning
(``structure_learning``)."""
