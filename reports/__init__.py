"""The baseline-vs-tuned report: load, retrain (cached), compare, render."""
