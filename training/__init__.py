"""Training side of the robust NR-IQA project: data, models, NT training, attacks and the gate.

Importing this package is cheap and torch-free; torch is imported by the submodules that need it.
"""
