"""Datasets of the bundled models, generated locally (no network): scikit-learn digits, num2words numbers."""
