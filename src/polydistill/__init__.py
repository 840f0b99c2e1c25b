"""polydistill: multilingual knowledge distillation, one small student per language."""

__version__ = "0.1.0"
