"""Stage one: the frozen backbone, its engines, the embedding cache, extract."""
