"""Scripts that train augflow's bundled offline models (CI never runs them)."""
