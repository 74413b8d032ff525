"""Model families beyond augflow's pixel UNets: each adapts one kind of diffusers pipeline to
augflow's operations (see :mod:`augflow.models.runner` for the dispatch)."""
