"""A trained model in use: the bundle, predict, explain, export, serve."""
