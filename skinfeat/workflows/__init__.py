"""The workflows: fit-head, cv, tune and evaluate as functions that combine the layers below
(data, embed, learn, evaluate, deploy), write the run folder and return its results."""
