"""Tumour-detection models: networks, synthetic phantoms, datasets, training, evaluation,
the torch inference backend, and the shipped zoo (models/zoo/).

May import `edge` (so training preprocesses exactly as deployment does); never `export`.
"""
