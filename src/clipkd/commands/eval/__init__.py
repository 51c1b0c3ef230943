"""`clipkd eval`: flags -> benchmark specs (``specs``) and the model to evaluate (``target``) -> results (``run``)."""
