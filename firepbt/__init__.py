"""firepbt: Population Based Training and FIRE PBT for hyperparameter schedules."""

__version__ = "0.1.0"
