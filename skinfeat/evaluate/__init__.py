"""Scores and reports: metrics, run and CV reports, model cards, figures, and scoring a trained
model on another labelled set."""
