"""geobook: the geometry and theory of deep learning, as a literate and tested package."""
__version__ = "0.1.0"
