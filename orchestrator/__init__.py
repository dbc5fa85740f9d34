"""Head2Toe at cluster scale: sweep configs validated before anything runs (config), the
trial plan and its keys (plan), capacity and cost arithmetic (capacity), extraction as Ray
tasks (extraction), reading features for trials (features, node_cache), the trial functions
(trial, image_trial), the Ray Tune fan-out with resume (sweep), and MLflow logging
(tracking, tune_logging).

May import: head2toe, Ray, Ray Tune, MLflow, pydantic, PyYAML; never analysis or jobs (jobs
builds on this package). No public API of its own beyond its modules: `jobs` and the tests
import what they use from each.
"""
