"""skinfeat: multi-modal skin lesion classification on cached frozen-backbone embeddings.

Stage one (``skinfeat.embed.extract``) embeds every image once into an HDF5 cache; stage two
(``skinfeat.learn.head``, ``skinfeat.learn.baseline``, ``skinfeat.learn.cv``) trains on the cache in seconds.
"""
__version__ = "0.1.0"
