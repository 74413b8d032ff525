"""Model families: each adapts one kind of diffusers pipeline to augflow's operations behind the
:class:`~augflow.models.families.base.Family` protocol; :mod:`augflow.models.runner` dispatches
to them (first match wins) and does the batching."""
